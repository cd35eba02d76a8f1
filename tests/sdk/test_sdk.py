"""The five V4 operations through the official Huawei Cloud Python SDK, in both authentication
modes (X-Auth-Token and AK/SK signatures): request/response models, status codes, and the SDK's
exceptions for every error path. Each test uses tenants of its own."""

import datetime as _dt
import json
import time
import uuid

import pytest

# conftest first: it points HOME at a temporary directory before any SDK module is imported.
from conftest import REGION, REGION_TYPE, aksk_client, token_client  # isort: skip
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_handler import HttpHandler
from huaweicloudsdkcore.signer import signer as signer_mod
from huaweicloudsdkcodeartsrepo.v4 import (
    CreateTenantKmsGrantRequest,
    CreateTenantKmsGrantResponse,
    ShowProjectTenantSettingsRequest,
    ShowProjectTenantSettingsResponse,
    ShowTenantKmsGrantRequest,
    ShowTenantKmsGrantResponse,
    ShowTenantRepoEncryptionSettingRequest,
    ShowTenantRepoEncryptionSettingResponse,
    TenantRepoEncryptionSettingRequestDto,
    UpdateTenantRepoEncryptionSettingRequest,
    UpdateTenantRepoEncryptionSettingResponse,
)

MAX_ID = 2147483647


# ----------------------------------------------------------------------------------------------
# Helpers


def new_id():
    return uuid.uuid4().hex


def create_key(server, tenant, alias="repo-key"):
    key = server.cli_json("kms", "create-key", "--tenant", tenant, "--alias", alias)
    assert key["key_state"] == 2
    return key["key_id"]


def add_project(server, tenant, name="proj"):
    project_id = new_id()
    server.cli("project", "add", "--tenant", tenant, "--project-id", project_id, "--name", name)
    return project_id


def put_setting(client, tenant, **fields):
    body = TenantRepoEncryptionSettingRequestDto(**fields)
    return client.update_tenant_repo_encryption_setting(
        UpdateTenantRepoEncryptionSettingRequest(tenant_id=tenant, body=body)
    )


def get_setting(client, tenant):
    return client.show_tenant_repo_encryption_setting(
        ShowTenantRepoEncryptionSettingRequest(tenant_id=tenant)
    )


def post_grant(client, tenant):
    return client.create_tenant_kms_grant(CreateTenantKmsGrantRequest(tenant_id=tenant))


def get_grant(client, tenant):
    return client.show_tenant_kms_grant(ShowTenantKmsGrantRequest(tenant_id=tenant))


def get_tenant_setting(client, project_id=None):
    return client.show_project_tenant_settings(ShowProjectTenantSettingsRequest(project_id=project_id))


def raw(resp):
    """The JSON body the SDK received (the SDK keeps it as raw_content)."""
    return json.loads(resp.raw_content)


def expect_error(call, status, code=None, code_prefix=None):
    """`call()` must raise the SDK's ClientRequestException with this status and error code,
    a message and a request id."""
    with pytest.raises(ClientRequestException) as info:
        call()
    err = info.value
    assert err.status_code == status, (err.status_code, err.error_code, err.error_msg)
    if code is not None:
        assert err.error_code == code, (err.error_code, err.error_msg)
    if code_prefix is not None:
        assert str(err.error_code).startswith(code_prefix), (err.error_code, err.error_msg)
    assert err.error_msg, "error_msg must not be empty"
    assert err.request_id, "the SDK must find X-Request-Id on errors"
    return err


def assert_kms_setting(resp, tenant, key_id, alias, key_state, default_enabled):
    assert resp.tenant_id == tenant
    assert resp.encryption_type == "KMS"
    assert resp.default_encryption_enabled is default_enabled
    assert resp.cmk_key_id == key_id
    assert resp.cmk_key_name == alias
    assert isinstance(resp.id, int) and 1 <= resp.id <= MAX_ID
    # The seeds (and the service) send key_state as an integer; this SDK version declares it
    # `str` and converts it, so the model holds "2". Check both.
    assert raw(resp)["key_state"] == key_state and type(raw(resp)["key_state"]) is int
    assert int(resp.key_state) == key_state
    assert resp.region == REGION
    assert resp.region_type == REGION_TYPE


# ----------------------------------------------------------------------------------------------
# The five operations, both modes


def test_fresh_tenant_reads(clients, tenant):
    client = clients(tenant)

    resp = get_setting(client, tenant)
    assert isinstance(resp, ShowTenantRepoEncryptionSettingResponse)
    assert resp.status_code == 202
    assert resp.tenant_id == tenant
    assert resp.encryption_type is None
    assert resp.default_encryption_enabled is False
    assert resp.id is None and resp.cmk_key_id is None and resp.cmk_key_name is None
    assert resp.key_state is None
    assert resp.region == REGION and resp.region_type == REGION_TYPE

    grant = get_grant(client, tenant)
    assert isinstance(grant, ShowTenantKmsGrantResponse)
    assert grant.status_code == 202
    assert grant.tenant_id == tenant and grant.assumed is False

    ts = get_tenant_setting(client)
    assert isinstance(ts, ShowProjectTenantSettingsResponse)
    assert ts.status_code == 200
    assert ts.encryption_type is None
    assert ts.default_encryption_enabled is False
    assert ts.permit_public == "deny"

    # Every response carries a request id.
    assert len(clients.responses) == 3
    assert all(r.headers.get("X-Request-Id") for r in clients.responses)


def test_kms_lifecycle(server, clients, tenant):
    client = clients(tenant)
    key_id = create_key(server, tenant, alias="sdk-key")

    grant = post_grant(client, tenant)
    assert isinstance(grant, CreateTenantKmsGrantResponse)
    assert grant.status_code == 200
    assert grant.tenant_id == tenant and grant.assumed is True
    # Idempotent.
    assert post_grant(client, tenant).assumed is True
    shown = get_grant(client, tenant)
    assert shown.status_code == 202 and shown.assumed is True

    put = put_setting(client, tenant, tenant_id=tenant, encryption_type="KMS", cmk_key_id=key_id,
                      default_encryption_enabled=True)
    assert isinstance(put, UpdateTenantRepoEncryptionSettingResponse)
    assert put.status_code == 200
    assert_kms_setting(put, tenant, key_id, "sdk-key", key_state=2, default_enabled=True)
    record_id = put.id

    got = get_setting(client, tenant)
    assert got.status_code == 202
    assert_kms_setting(got, tenant, key_id, "sdk-key", key_state=2, default_enabled=True)
    assert got.id == record_id

    ts = get_tenant_setting(client)
    assert ts.status_code == 200
    assert ts.encryption_type == "KMS" and ts.default_encryption_enabled is True

    # key_state is the key's state in KMS now (the server runs with the cache off).
    server.cli("kms", "disable-key", "--tenant", tenant, "--key-id", key_id)
    got = get_setting(client, tenant)
    assert got.status_code == 202
    assert_kms_setting(got, tenant, key_id, "sdk-key", key_state=3, default_enabled=True)

    # Switching to normal (any case) needs no KMS and turns default encryption off.
    normal = put_setting(client, tenant, encryption_type="Normal")
    assert normal.status_code == 200
    assert normal.encryption_type == "normal"
    assert normal.default_encryption_enabled is False
    assert normal.id == record_id

    server.cli("tenant", "set", "--tenant", tenant, "--permit-public", "allow")
    ts = get_tenant_setting(client)
    assert (ts.encryption_type, ts.default_encryption_enabled, ts.permit_public) == (
        "normal", False, "allow")

    assert all(r.headers.get("X-Request-Id") for r in clients.responses)


def test_put_merges_and_name_is_checked(server, clients, tenant):
    client = clients(tenant)
    key_id = create_key(server, tenant, alias="merge-key")
    post_grant(client, tenant)

    first = put_setting(client, tenant, encryption_type="kms", cmk_key_id=key_id,
                        cmk_key_name="merge-key")
    assert first.encryption_type == "KMS" and first.default_encryption_enabled is False
    # Absent fields keep their stored values.
    second = put_setting(client, tenant, default_encryption_enabled=True)
    assert_kms_setting(second, tenant, key_id, "merge-key", key_state=2, default_enabled=True)
    assert second.id == first.id

    expect_error(lambda: put_setting(client, tenant, cmk_key_id=key_id, cmk_key_name="other-name"),
                 400, "RC.400010")


def test_project_settings_of_owner(server, clients, tenant):
    owner = new_id()
    project_id = add_project(server, owner)
    owner_client = clients(owner, user="olivia")
    put_setting(owner_client, owner, encryption_type="normal")
    server.cli("tenant", "set", "--tenant", owner, "--permit-public", "allow")

    # The owner's own users read it through the project id.
    ts = get_tenant_setting(owner_client, project_id)
    assert ts.status_code == 200
    assert (ts.encryption_type, ts.default_encryption_enabled, ts.permit_public) == (
        "normal", False, "allow")

    # A user of another tenant: refused, then allowed once a member of the project.
    outsider = clients(tenant, user="bob", role="member")
    expect_error(lambda: get_tenant_setting(outsider, project_id), 403, "DEV-23-50804")
    server.cli("project", "add-member", "--project-id", project_id, "--tenant", tenant,
               "--user", "bob")
    ts = get_tenant_setting(outsider, project_id)
    assert ts.status_code == 200 and ts.permit_public == "allow"
    assert ts.encryption_type == "normal"


# ----------------------------------------------------------------------------------------------
# Error paths, both modes


def test_other_tenant_is_forbidden(server, clients, tenant):
    other = new_id()
    client = clients(tenant)
    create_key(server, other)
    for call in (
        lambda: get_setting(client, other),
        lambda: put_setting(client, other, encryption_type="normal"),
        lambda: post_grant(client, other),
        lambda: get_grant(client, other),
    ):
        expect_error(call, 403, "CH.004403")
    # Nothing was written for the other tenant.
    assert get_grant(clients(other), other).assumed is False


def test_member_reads_but_cannot_write(clients, tenant):
    member = clients(tenant, user="mia", role="member")
    assert get_setting(member, tenant).status_code == 202
    assert get_grant(member, tenant).status_code == 202
    assert get_tenant_setting(member).status_code == 200
    expect_error(lambda: put_setting(member, tenant, encryption_type="normal"), 403, "RC.403001")
    expect_error(lambda: post_grant(member, tenant), 403, "RC.403001")


def test_kms_without_grant(server, clients, tenant):
    client = clients(tenant)
    key_id = create_key(server, tenant)
    expect_error(lambda: put_setting(client, tenant, encryption_type="KMS", cmk_key_id=key_id),
                 400, "RC.400007")
    assert get_setting(client, tenant).encryption_type is None


def test_disabled_key(server, clients, tenant):
    client = clients(tenant)
    key_id = create_key(server, tenant)
    server.cli("kms", "disable-key", "--tenant", tenant, "--key-id", key_id)
    post_grant(client, tenant)
    err = expect_error(
        lambda: put_setting(client, tenant, encryption_type="KMS", cmk_key_id=key_id), 400, "RC.400009")
    assert key_id in err.error_msg or "disabled" in err.error_msg.lower()


def test_key_of_another_tenant(server, clients, tenant):
    client = clients(tenant)
    foreign_key = create_key(server, new_id())
    post_grant(client, tenant)
    expect_error(lambda: put_setting(client, tenant, encryption_type="KMS", cmk_key_id=foreign_key),
                 400, "RC.400008")


def test_body_tenant_mismatch(clients, tenant):
    client = clients(tenant)
    expect_error(lambda: put_setting(client, tenant, tenant_id=new_id(), encryption_type="normal"),
                 400, "RC.400003")


def test_unknown_and_invalid_project(clients, tenant):
    client = clients(tenant)
    expect_error(lambda: get_tenant_setting(client, new_id()), 404, "RC.404001")
    expect_error(lambda: get_tenant_setting(client, "too-short"), 400, "RC.400004")


# ----------------------------------------------------------------------------------------------
# Token mode only


def test_garbage_token(server, tenant):
    client = token_client(server.endpoint, "not-a-token")
    expect_error(lambda: get_setting(client, tenant), 401, "RC.401002")


def test_tampered_token(server, tenant):
    token = server.cli_out("token", "issue", "--tenant", tenant, "--user", "alice", "--role", "admin")
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    client = token_client(server.endpoint, flipped)
    expect_error(lambda: get_setting(client, tenant), 401, code_prefix="RC.401")


def test_expired_token(server, tenant):
    token = server.cli_out("token", "issue", "--tenant", tenant, "--user", "alice", "--role", "admin",
                           "--ttl", "1s")
    time.sleep(2.2)
    client = token_client(server.endpoint, token)
    expect_error(lambda: get_setting(client, tenant), 401, "DEV.00000003")


def test_token_wins_over_signature(server, tenant):
    """A valid token and a signature by unknown credentials: the token decides."""
    token = server.cli_out("token", "issue", "--tenant", tenant, "--user", "alice", "--role", "admin")
    client = token_client(server.endpoint, token, keep_signature=True)
    assert get_setting(client, tenant).status_code == 202
    assert put_setting(client, tenant, encryption_type="normal").status_code == 200


def test_token_of_other_tenant_wins_over_own_signature(server, tenant):
    """Token of tenant B, signed with a valid key of tenant A: the caller is B's user."""
    other = new_id()
    cred = server.cli_json("credential", "create", "--tenant", tenant, "--user", "alice",
                           "--role", "admin")
    token = server.cli_out("token", "issue", "--tenant", other, "--user", "bob", "--role", "admin")
    client = token_client(server.endpoint, token, keep_signature=True,
                          ak=cred["access_key"], sk=cred["secret_key"])
    assert get_setting(client, other).tenant_id == other
    expect_error(lambda: get_setting(client, tenant), 403, "CH.004403")


# ----------------------------------------------------------------------------------------------
# AK/SK mode only


def _credential(server, tenant, role="admin"):
    cred = server.cli_json("credential", "create", "--tenant", tenant, "--user", "alice",
                           "--role", role)
    assert cred["access_key"] and cred["secret_key"]
    return cred["access_key"], cred["secret_key"]


def test_wrong_secret_key(server, tenant):
    ak, sk = _credential(server, tenant)
    wrong = sk[:-1] + ("x" if sk[-1] != "x" else "y")
    client = aksk_client(server.endpoint, ak, wrong)
    expect_error(lambda: get_setting(client, tenant), 401, code_prefix="RC.401")


def test_unknown_access_key(server, tenant):
    client = aksk_client(server.endpoint, "UNKNOWNACCESSKEY0000", "some-secret-key-that-is-not-stored")
    expect_error(lambda: get_setting(client, tenant), 401, code_prefix="RC.401")


def test_credential_list_and_delete(server, tenant):
    ak, sk = _credential(server, tenant)
    client = aksk_client(server.endpoint, ak, sk)
    assert get_setting(client, tenant).status_code == 202

    listed = server.cli_out("credential", "list", "--tenant", tenant)
    assert ak in listed
    assert sk not in listed, "credential list must not print secret keys"

    server.cli("credential", "delete", "--access-key", ak)
    assert ak not in server.cli_out("credential", "list", "--tenant", tenant)
    expect_error(lambda: get_setting(client, tenant), 401, code_prefix="RC.401")


def test_member_credential_is_read_only(server, tenant):
    ak, sk = _credential(server, tenant, role="member")
    client = aksk_client(server.endpoint, ak, sk)
    assert get_setting(client, tenant).status_code == 202
    expect_error(lambda: post_grant(client, tenant), 403, "RC.403001")


def test_stale_signature_date(server, tenant, monkeypatch):
    """A request signed an hour ago (X-Sdk-Date outside any replay window) is refused."""
    ak, sk = _credential(server, tenant)
    client = aksk_client(server.endpoint, ak, sk)

    class _HourAgo(_dt.datetime):
        @classmethod
        def utcnow(cls):
            return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None) - _dt.timedelta(hours=1)

    # signer.py does `from datetime import datetime` and stamps X-Sdk-Date with utcnow().
    monkeypatch.setattr(signer_mod, "datetime", _HourAgo)
    expect_error(lambda: get_setting(client, tenant), 401, code_prefix="RC.401")
    monkeypatch.undo()
    assert get_setting(client, tenant).status_code == 202


def test_body_changed_after_signing(server, tenant):
    """A request handler runs after signing: a body altered there no longer matches."""
    ak, sk = _credential(server, tenant)

    def tamper(**kwargs):
        request = kwargs["request"]
        if request.method == "PUT":
            request.body = json.dumps({"encryption_type": "KMS"})

    client = aksk_client(server.endpoint, ak, sk, HttpHandler().add_request_handler(tamper))
    expect_error(lambda: put_setting(client, tenant, encryption_type="normal"), 401,
                 code_prefix="RC.401")
    assert get_setting(client, tenant).encryption_type is None


def test_readme_sdk_example_runs_as_written(server, tmp_path):
    """The README's "Using the official SDK" example, run verbatim (only the endpoint
    is pointed at this server) in a directory with the cred.json the README makes."""
    import re
    import subprocess
    import sys

    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Using the official SDK", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "http://127.0.0.1:8080" in example, "the README example no longer targets :8080"
    (tmp_path / "sdk_example.py").write_text(
        example.replace("http://127.0.0.1:8080", server.endpoint)
    )
    # The README's step: credential create --tenant t1 --user bob --role admin > cred.json
    (tmp_path / "cred.json").write_text(
        server.cli_out("credential", "create", "--tenant", "t1", "--user", "bob", "--role", "admin")
    )
    out = subprocess.run(
        [sys.executable, "sdk_example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert '"tenant_id": "t1"' in lines[0] and '"assumed"' in lines[0], out.stdout
    assert lines[-1].startswith("400 RC.400011 "), out.stdout
    assert len(lines[-1].split()[-1]) >= 8, "a request id ends the line"
