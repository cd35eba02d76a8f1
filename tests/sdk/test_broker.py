"""The SDK's two list operations of the key broker (ListTenantCmks,
ListTenantEncryptedRepositories) through the official Huawei Cloud Python SDK, in both
authentication modes, with repositories registered as the platform registers them (a service
principal's POST; the SDK has no registration call). Each test uses tenants of its own."""

import base64
import json
import uuid

import pytest
import requests

# conftest first: it points HOME at a temporary directory before any SDK module is imported.
from conftest import token_client  # noqa: F401  isort: skip
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcodeartsrepo.v4 import (
    CreateTenantKmsGrantRequest,
    ListTenantCmksRequest,
    ListTenantCmksResponse,
    ListTenantEncryptedRepositoriesRequest,
    ListTenantEncryptedRepositoriesResponse,
    RepoEncryptionDto,
    TenantCMKDto,
    TenantRepoEncryptionSettingRequestDto,
    UpdateTenantRepoEncryptionSettingRequest,
)


def service_token(server, name="storage-node"):
    return server.cli_out("token", "issue", "--service", name)


def register(server, token, tenant, **body):
    r = requests.post(
        f"{server.endpoint}/v4/tenants/{tenant}/repo-encryption/repositories",
        headers={"X-Auth-Token": token, "Content-Type": "application/json"},
        data=json.dumps(body),
        timeout=10,
    )
    assert r.status_code in (200, 201), r.text
    return r.json()


def configure(server, client, tenant):
    key = server.cli_json("kms", "create-key", "--tenant", tenant, "--alias", "sdk-key")["key_id"]
    client.create_tenant_kms_grant(CreateTenantKmsGrantRequest(tenant_id=tenant))
    body = TenantRepoEncryptionSettingRequestDto(
        encryption_type="KMS", cmk_key_id=key, default_encryption_enabled=True)
    client.update_tenant_repo_encryption_setting(
        UpdateTenantRepoEncryptionSettingRequest(tenant_id=tenant, body=body))
    return key


def list_cmks(client, tenant, **kw):
    return client.list_tenant_cmks(ListTenantCmksRequest(tenant_id=tenant, **kw))


def list_repos(client, tenant, **kw):
    return client.list_tenant_encrypted_repositories(
        ListTenantEncryptedRepositoriesRequest(tenant_id=tenant, **kw))


def test_list_tenant_cmks_every_state_paged(server, clients, tenant):
    client = clients(tenant)
    # An empty list: the SDK turns the bare `[]` into body None.
    empty = list_cmks(client, tenant)
    assert isinstance(empty, ListTenantCmksResponse)
    assert empty.status_code == 202 and empty.body is None
    assert json.loads(empty.raw_content) == []

    ids = {}
    for alias in ["k-enabled", "k-disabled", "k-pending-del", "k-import"]:
        args = ["kms", "create-key", "--tenant", tenant, "--alias", alias]
        if alias == "k-import":
            args += ["--origin", "external"]
        ids[alias] = server.cli_json(*args)["key_id"]
    server.cli("kms", "disable-key", "--tenant", tenant, "--key-id", ids["k-disabled"])
    server.cli("kms", "schedule-key-deletion", "--tenant", tenant, "--key-id",
               ids["k-pending-del"], "--pending-days", "7")
    other = uuid.uuid4().hex
    server.cli("kms", "create-key", "--tenant", other, "--alias", "not-yours")

    everything = list_cmks(client, tenant, offset=0, limit=100)
    assert everything.status_code == 202
    assert all(isinstance(k, TenantCMKDto) for k in everything.body)
    got = {k.cmk_key_name: (k.cmk_key_id, int(k.key_state)) for k in everything.body}
    assert got == {
        "k-enabled": (ids["k-enabled"], 2),
        "k-disabled": (ids["k-disabled"], 3),
        "k-pending-del": (ids["k-pending-del"], 4),
        "k-import": (ids["k-import"], 5),
    }
    # key_state goes on the wire as an integer (the SDK's model declares it str).
    assert all(type(k["key_state"]) is int for k in json.loads(everything.raw_content))
    order = [k.cmk_key_id for k in everything.body]
    assert order == sorted(order)
    # Pages of one never overlap and cover the list, in the same order.
    pages = [list_cmks(client, tenant, offset=i, limit=1).body[0].cmk_key_id for i in range(4)]
    assert pages == order
    assert list_cmks(client, tenant, offset=4, limit=1).body is None
    for bad in [dict(limit=0), dict(limit=101), dict(offset=-1)]:
        with pytest.raises(ClientRequestException) as info:
            list_cmks(client, tenant, **bad)
        assert info.value.status_code == 400 and info.value.error_code == "RC.400002", bad


def test_list_tenant_encrypted_repositories_paged_and_ordered(server, clients, tenant):
    client = clients(tenant)
    assert list_repos(client, tenant).body is None  # nothing registered yet
    key = configure(server, client, tenant)
    token = service_token(server)
    names = {1: ("delta", "ann"), 2: ("alpha", "zoe"), 3: ("charlie", None), 4: ("bravo", "bob")}
    for repo_id, (name, owner) in names.items():
        body = dict(repo_id=repo_id, repo_name=name, full_path=f"group/{name}",
                    project_id=uuid.uuid4().hex, project_name="proj", owner_id=100 + repo_id,
                    owner_iam_id=f"iam-{repo_id}", owner_tenant_name="tn",
                    owner_nick_name=f"nick-{repo_id}")
        if owner:
            body["owner_name"] = owner
        made = register(server, token, tenant, **body)
        assert made["encrypted"] is True and made["cmk_key_id"] == key
        assert len(base64.b64decode(made["data_key"])) == 32
    # Neither an unencrypted nor a shredded repository is listed.
    register(server, token, tenant, repo_id=5, repo_name="echo", full_path="group/echo",
             encrypted=False)
    register(server, token, tenant, repo_id=6, repo_name="foxtrot", full_path="group/foxtrot")
    r = requests.delete(
        f"{server.endpoint}/v4/tenants/{tenant}/repo-encryption/repositories/6/data-key",
        headers={"X-Auth-Token": token}, timeout=10)
    assert r.status_code == 204, r.text

    default = list_repos(client, tenant)
    assert isinstance(default, ListTenantEncryptedRepositoriesResponse)
    assert default.status_code == 202
    assert all(isinstance(r, RepoEncryptionDto) for r in default.body)
    # Default order: repoName, desc.
    assert [r.repo_name for r in default.body] == ["delta", "charlie", "bravo", "alpha"]
    first = default.body[-1]
    assert (first.repo_id, first.full_path, first.owner_id, first.owner_iam_id,
            first.owner_tenant_name, first.owner_nick_name, first.owner_name,
            first.project_name) == (2, "group/alpha", 102, "iam-2", "tn", "nick-2", "zoe", "proj")
    assert len(first.project_id) == 32

    asc = list_repos(client, tenant, order_by="repoName", sort="asc")
    assert [r.repo_name for r in asc.body] == ["alpha", "bravo", "charlie", "delta"]
    by_owner = list_repos(client, tenant, order_by="ownerName", sort="asc")
    # A repository without an owner name sorts as the empty name.
    assert [r.owner_name for r in by_owner.body] == [None, "ann", "bob", "zoe"]
    pages = [r.repo_id for i in range(0, 4, 3)
             for r in list_repos(client, tenant, offset=i, limit=3, sort="asc").body]
    assert pages == [2, 4, 3, 1]
    assert list_repos(client, tenant, offset=4).body is None
    for bad in [dict(limit=0), dict(limit=101), dict(order_by="size"), dict(sort="up")]:
        with pytest.raises(ClientRequestException) as info:
            list_repos(client, tenant, **bad)
        assert info.value.status_code == 400, bad


def test_lists_are_the_tenants_own(server, clients, tenant):
    client = clients(tenant)
    other = uuid.uuid4().hex
    for call in (lambda: list_cmks(client, other), lambda: list_repos(client, other)):
        with pytest.raises(ClientRequestException) as info:
            call()
        assert info.value.status_code == 403 and info.value.error_code == "CH.004403"
    # A member reads both lists.
    member = clients(tenant, user="bob", role="member")
    assert list_cmks(member, tenant).status_code == 202
    assert list_repos(member, tenant).status_code == 202
