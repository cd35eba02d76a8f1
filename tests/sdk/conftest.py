"""Fixtures of the official-SDK compatibility suite.

A session-wide `repocrypt serve` (the release binary) on a free port, in a fresh temporary
working directory with its own `--data-dir`, and clients of the official Huawei Cloud Python SDK
(`huaweicloudsdkcodeartsrepo.v4.CodeArtsRepoClient`) built exactly as a user builds them, in both
authentication modes the service accepts:

* ``aksk``:  ``BasicCredentials(ak, sk)`` from ``repocrypt credential create``; the SDK signs every
  request (``Authorization: SDK-HMAC-SHA256 ...`` + ``X-Sdk-Date``).
* ``token``: a token from ``repocrypt token issue``, sent as ``X-Auth-Token`` by a request handler
  (``HttpHandler.add_request_handler``). The builder insists on credentials, so the client gets
  placeholder ones; the SDK signs with them *before* the request handlers run
  (``Client.build_future_request`` -> ``Credentials.sign_request``, then
  ``HttpClient.do_request_sync`` -> ``HttpHandler.process_request``), so the handler drops that
  signature and the request carries the token alone.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

# The SDK writes $HOME/.huaweicloud/application_id the first time it computes its user agent.
# Point HOME at a throwaway directory before any SDK module is imported, so the suite leaves no
# trace in the real home directory.
_SDK_HOME = tempfile.mkdtemp(prefix="repocrypt-sdk-home-")
os.environ["HOME"] = _SDK_HOME
os.environ.pop("USERPROFILE", None)
# No ambient SDK credentials, ever (the builder would fall back to them).
for _var in [v for v in os.environ if v.startswith("HUAWEICLOUD_SDK_")]:
    del os.environ[_var]

from huaweicloudsdkcore.auth.credentials import BasicCredentials  # noqa: E402
from huaweicloudsdkcore.http.http_handler import HttpHandler  # noqa: E402
from huaweicloudsdkcodeartsrepo.v4 import CodeArtsRepoClient  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("REPOCRYPT_BIN") or REPO / "target" / "release" / "repocrypt")
REGION = "sdk-test-region-1"
REGION_TYPE = "primary"

# Credentials the token-mode client is built with (the builder requires some); their signature
# is removed before the request is sent.
PLACEHOLDER_AK = "TOKENMODEPLACEHOLDER"
PLACEHOLDER_SK = "token-mode-placeholder-secret-key-0000000"


def pytest_unconfigure(config):
    shutil.rmtree(_SDK_HOME, ignore_errors=True)


def _child_env(extra=None):
    """The environment of every repocrypt process: no REPOCRYPT_* setting leaks in from the
    caller's shell (a root key, a config file or a database URL would point the suite at
    other data), then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOCRYPT_")}
    env["REPOCRYPT_KEY_STATE_CACHE_TTL"] = "0"
    env.update(extra or {})
    return env


class Server:
    def __init__(self, extra_env=None):
        self.extra_env = dict(extra_env or {})
        if not BIN.is_file():
            pytest.exit(f"no repocrypt binary at {BIN} (build it or set REPOCRYPT_BIN)", 2)
        self.workdir = Path(tempfile.mkdtemp(prefix="repocrypt-sdk-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(self.data_dir),
             "--region", REGION, "--region-type", REGION_TYPE],
            cwd=self.workdir,
            env=_child_env(self.extra_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        first = self._first_line(timeout=30)
        prefix = "repocrypt listening on http://"
        if not first.startswith(prefix):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"unexpected first stdout line {first!r}; log:\n{self.log()}")
        self.addr = first[len(prefix):].strip()
        self.endpoint = f"http://{self.addr}"
        # Keep draining stdout so the server can never block on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def _first_line(self, timeout):
        box = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not box:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"no listening line within {timeout}s; log:\n{self.log()}")
        return box[0].decode("utf-8", "replace")

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def cli(self, *args, check=True):
        """Run an admin command on the server's data; its CompletedProcess (text)."""
        done = subprocess.run(
            [str(BIN), "--data-dir", str(self.data_dir), *args],
            cwd=self.workdir,
            env=_child_env(self.extra_env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"repocrypt {' '.join(args)} exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}"
            )
        return done

    def cli_out(self, *args):
        return self.cli(*args).stdout.strip()

    def cli_json(self, *args):
        return json.loads(self.cli_out(*args))

    def stop(self):
        """SIGTERM, then wait; the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("repocrypt serve did not stop within 15 s of SIGTERM")
        finally:
            self._log.close()


@pytest.fixture(scope="session")
def server():
    srv = Server()
    yield srv
    code = srv.stop()
    log = srv.log()
    shutil.rmtree(srv.workdir, ignore_errors=True)
    assert code == 0, f"repocrypt serve exited {code} after SIGTERM; log tail:\n{log}"


# ----------------------------------------------------------------------------------------------
# Clients, built as a user of the official SDK builds them.


def _recording_handler(responses):
    """An HttpHandler whose response handler keeps every raw `requests.Response` (the SDK's
    response models do not expose headers such as X-Request-Id)."""
    return HttpHandler().add_response_handler(lambda **kw: responses.append(kw["response"]))


def aksk_client(endpoint, ak, sk, http_handler=None):
    return (
        CodeArtsRepoClient.new_builder()
        .with_credentials(BasicCredentials(ak, sk))
        .with_endpoints([endpoint])
        .with_http_handler(http_handler)
        .build()
    )


def token_handler(token, keep_signature=False, http_handler=None):
    """Request handler adding X-Auth-Token. It runs after the SDK has signed the request with
    the client's credentials; unless `keep_signature`, that signature is dropped."""

    def add_token(**kwargs):
        headers = kwargs["request"].header_params
        headers["X-Auth-Token"] = token
        if not keep_signature:
            headers.pop("Authorization", None)
            headers.pop("X-Sdk-Date", None)

    return (http_handler or HttpHandler()).add_request_handler(add_token)


def token_client(endpoint, token, keep_signature=False, http_handler=None, ak=None, sk=None):
    return (
        CodeArtsRepoClient.new_builder()
        .with_credentials(BasicCredentials(ak or PLACEHOLDER_AK, sk or PLACEHOLDER_SK))
        .with_endpoints([endpoint])
        .with_http_handler(token_handler(token, keep_signature, http_handler))
        .build()
    )


class Clients:
    """Makes SDK clients for one authentication mode; `responses` collects every raw HTTP
    response those clients received."""

    def __init__(self, server, mode):
        self.server = server
        self.mode = mode
        self.responses = []

    def issue_token(self, tenant, user, role="admin", ttl=None):
        args = ["token", "issue", "--tenant", tenant, "--user", user, "--role", role]
        if ttl:
            args += ["--ttl", ttl]
        return self.server.cli_out(*args)

    def create_credential(self, tenant, user, role="admin"):
        cred = self.server.cli_json("credential", "create", "--tenant", tenant, "--user", user,
                                    "--role", role)
        return cred["access_key"], cred["secret_key"]

    def __call__(self, tenant, user="alice", role="admin"):
        handler = _recording_handler(self.responses)
        if self.mode == "token":
            return token_client(self.server.endpoint, self.issue_token(tenant, user, role),
                                http_handler=handler)
        ak, sk = self.create_credential(tenant, user, role)
        return aksk_client(self.server.endpoint, ak, sk, http_handler=handler)

    def last_request_id(self):
        return self.responses[-1].headers.get("X-Request-Id")


@pytest.fixture(params=["token", "aksk"])
def auth_mode(request):
    return request.param


@pytest.fixture
def clients(server, auth_mode):
    return Clients(server, auth_mode)


@pytest.fixture
def tenant():
    """A tenant id of its own for every test."""
    return uuid.uuid4().hex
