"""The official SDK in token mode with a token of a real OpenStack Keystone v3: repocrypt runs
with `iam = "keystone"` against a Keystone of this module's own (tests/keystone/start.sh), and
the SDK sends the token Keystone issued as X-Auth-Token, as a Huawei Cloud user sends an IAM
token. Skipped without Keystone (tests/keystone/install.sh), unless REPOCRYPT_REQUIRE_EXTERNAL
is set, as in .ci/run."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

# conftest first: it points HOME at a temporary directory before any SDK module is imported.
from conftest import REPO, Server, token_client  # isort: skip
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcodeartsrepo.v4 import (
    CreateTenantKmsGrantRequest,
    ShowTenantKmsGrantRequest,
    ShowTenantRepoEncryptionSettingRequest,
    TenantRepoEncryptionSettingRequestDto,
    UpdateTenantRepoEncryptionSettingRequest,
)

HERE = REPO / "tests" / "keystone"
# A Keystone the Rust suite set up and seeded already (tests/common/keystone.rs): a copy of it
# starts in about 3 s instead of 16-32 s.
TEMPLATE = REPO / "target" / "tmp" / "keystone-template"


def _venv():
    venv = Path(os.environ.get("REPOCRYPT_KEYSTONE_VENV") or HERE / ".venv")
    return venv if (venv / "bin" / "keystone-manage").exists() else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def keystone():
    venv = _venv()
    if venv is None:
        if os.environ.get("REPOCRYPT_REQUIRE_EXTERNAL"):
            pytest.fail("REPOCRYPT_REQUIRE_EXTERNAL is set but Keystone is not installed "
                        "(run tests/keystone/install.sh, or set REPOCRYPT_KEYSTONE_VENV)")
        pytest.skip("no Keystone (run tests/keystone/install.sh, or set REPOCRYPT_KEYSTONE_VENV)")
    state = Path(tempfile.mkdtemp(prefix="repocrypt-keystone-"))
    if (TEMPLATE / "ids.env").exists():
        shutil.copytree(TEMPLATE, state, dirs_exist_ok=True)
    port = _free_port()
    env = dict(os.environ, KEYSTONE_VENV=str(venv))
    pid = subprocess.run(["bash", str(HERE / "start.sh"), str(state), str(port)], env=env,
                         check=True, capture_output=True, text=True).stdout.strip()
    ids = dict(line.split("=", 1) for line in (state / "ids.env").read_text().splitlines())
    yield {"url": f"http://127.0.0.1:{port}/v3", "ids": ids}
    subprocess.run(["kill", pid], check=False)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def keystone_server(keystone):
    srv = Server({
        "REPOCRYPT_IAM": "keystone",
        "REPOCRYPT_IAM_URL": keystone["url"],
        "REPOCRYPT_IAM_USER": "repocrypt",
        "REPOCRYPT_IAM_PROJECT": "service",
        "REPOCRYPT_IAM_PASSWORD": "repocrypt-secret",
    })
    # serve logs in to Keystone at start: wait for it, so that the first request's deadline
    # (iam_timeout) is its validation's alone.
    deadline = time.monotonic() + 20
    while "logged in to Keystone" not in srv.log():
        if "Keystone is not answering yet" in srv.log() or time.monotonic() > deadline:
            pytest.fail(f"repocrypt did not log in to Keystone; log:\n{srv.log()}")
        time.sleep(0.05)
    yield srv
    code = srv.stop()
    log = srv.log()
    shutil.rmtree(srv.workdir, ignore_errors=True)
    assert code == 0, f"repocrypt serve exited {code}; log tail:\n{log}"


def keystone_token(keystone, user, domain, project=None):
    """POST /v3/auth/tokens, as a user gets an IAM token: the X-Subject-Token, and the body."""
    scope = ({"project": {"name": project, "domain": {"name": domain}}} if project
             else {"domain": {"name": domain}})
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": domain}, "password": f"{user}-secret"}}},
        "scope": scope}}
    req = urllib.request.Request(f"{keystone['url']}/auth/tokens?nocatalog",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201
        return resp.headers["X-Subject-Token"], json.load(resp)["token"]


def test_sdk_in_token_mode_with_a_keystone_token(keystone, keystone_server):
    token, body = keystone_token(keystone, "alice", "tenant-a", project="app")
    tenant = body["project"]["domain"]["id"]
    assert tenant == keystone["ids"]["TENANT_A_DOMAIN_ID"]
    client = token_client(keystone_server.endpoint, token)

    got = client.show_tenant_repo_encryption_setting(
        ShowTenantRepoEncryptionSettingRequest(tenant_id=tenant))
    assert got.status_code == 202 and got.tenant_id == tenant
    grant = client.create_tenant_kms_grant(CreateTenantKmsGrantRequest(tenant_id=tenant))
    assert grant.status_code == 200 and grant.assumed is True
    key = keystone_server.cli_json("kms", "create-key", "--tenant", tenant, "--alias", "ks-key")
    put = client.update_tenant_repo_encryption_setting(UpdateTenantRepoEncryptionSettingRequest(
        tenant_id=tenant, body=TenantRepoEncryptionSettingRequestDto(
            encryption_type="KMS", cmk_key_id=key["key_id"], default_encryption_enabled=True)))
    assert put.status_code == 200 and put.cmk_key_id == key["key_id"] and str(put.key_state) == "2"

    # bob is a member of tenant-a: he reads, and may not change.
    bob, _ = keystone_token(keystone, "bob", "tenant-a")
    member = token_client(keystone_server.endpoint, bob)
    shown = member.show_tenant_kms_grant(ShowTenantKmsGrantRequest(tenant_id=tenant))
    assert shown.status_code == 202 and shown.assumed is True
    with pytest.raises(ClientRequestException) as err:
        member.create_tenant_kms_grant(CreateTenantKmsGrantRequest(tenant_id=tenant))
    assert (err.value.status_code, err.value.error_code) == (403, "RC.403001")

    # A token of tenant-b on tenant-a's path.
    other, _ = keystone_token(keystone, "alice", "tenant-b")
    with pytest.raises(ClientRequestException) as err:
        token_client(keystone_server.endpoint, other).show_tenant_repo_encryption_setting(
            ShowTenantRepoEncryptionSettingRequest(tenant_id=tenant))
    assert (err.value.status_code, err.value.error_code) == (403, "CH.004403")

    # Not a token Keystone knows.
    with pytest.raises(ClientRequestException) as err:
        token_client(keystone_server.endpoint, "gAAAAABnot-a-token").show_tenant_kms_grant(
            ShowTenantKmsGrantRequest(tenant_id=tenant))
    assert (err.value.status_code, err.value.error_code) == (401, "RC.401002")
