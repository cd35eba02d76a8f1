"""Create the test identities in a running Keystone (run by tests/keystone/start.sh).

    python seed.py http://127.0.0.1:PORT/v3 DIR/ids.env

Idempotent: everything is looked up by name first and created only when missing (start.sh
runs it only while DIR/ids.env is missing). Uses the `admin` user that
`keystone-manage bootstrap` made. Writes the ids Keystone chose (domains, users, projects,
roles) as KEY=value lines to the file named second, for the tests to read.
"""

import os
import sys

import requests

URL = sys.argv[1].rstrip("/")
IDS_FILE = sys.argv[2]
JSON = {"Content-Type": "application/json"}


def password_auth(user, domain, password, scope):
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": user, "domain": {"id": domain}, "password": password}
                },
            },
            "scope": scope,
        }
    }
    r = requests.post(f"{URL}/auth/tokens?nocatalog", json=body, timeout=30)
    r.raise_for_status()
    return r.headers["X-Subject-Token"]


# An admin token, scoped to the bootstrap project `admin` (role admin there, which the
# default policy needs for identity administration).
token = password_auth(
    "admin", "default", "admin-secret",
    {"project": {"name": "admin", "domain": {"id": "default"}}},
)
H = {"X-Auth-Token": token, **JSON}


def call(method, path, **kw):
    r = requests.request(method, f"{URL}{path}", headers=H, timeout=30, **kw)
    if r.status_code >= 400:
        sys.exit(f"seed: {method} {path}: {r.status_code} {r.text}")
    return r.json() if r.content else None


def ensure(collection, key, name, body, **filters):
    """The entity `name` of `collection` (filtered), created from `body` if missing."""
    found = call("GET", f"/{collection}", params={"name": name, **filters})[collection]
    if found:
        return found[0]["id"]
    return call("POST", f"/{collection}", json={key: {"name": name, **body}})[key]["id"]


ids = {}

# Roles: bootstrap makes reader, member, manager, admin and service (admin implies
# manager implies member implies reader); make sure the three the tests map exist.
for role in ("member", "reader", "service"):
    ids[f"ROLE_{role.upper()}_ID"] = ensure("roles", "role", role, {})
admin_role = ensure("roles", "role", "admin", {})

# The service's own identity: user `repocrypt` in domain Default with the `service` role
# on project `service`; its project-scoped token may validate other users' tokens
# (identity:validate_token allows rule:service_role under the default policy).
ids["SERVICE_PROJECT_ID"] = ensure(
    "projects", "project", "service",
    {"domain_id": "default", "description": "service users"}, domain_id="default",
)
ids["REPOCRYPT_USER_ID"] = ensure(
    "users", "user", "repocrypt",
    {"domain_id": "default", "password": "repocrypt-secret", "enabled": True},
    domain_id="default",
)
call("PUT", f"/projects/{ids['SERVICE_PROJECT_ID']}/users/{ids['REPOCRYPT_USER_ID']}"
            f"/roles/{ids['ROLE_SERVICE_ID']}")

# Two tenants, each a domain with a project `app` and the same four users (user names are
# unique per domain): alice admin on the domain and on `app`, bob member, dave reader,
# carol no role at all. Domain-scoped and project-scoped tokens both carry the role.
for domain in ("tenant-a", "tenant-b"):
    d = domain.replace("-", "_").upper()
    domain_id = ensure("domains", "domain", domain, {"enabled": True})
    ids[f"{d}_DOMAIN_ID"] = domain_id
    project_id = ensure("projects", "project", "app", {"domain_id": domain_id},
                        domain_id=domain_id)
    ids[f"{d}_APP_PROJECT_ID"] = project_id
    for user, role_id in (("alice", admin_role), ("bob", ids["ROLE_MEMBER_ID"]),
                          ("dave", ids["ROLE_READER_ID"]), ("carol", None)):
        user_id = ensure(
            "users", "user", user,
            {"domain_id": domain_id, "password": f"{user}-secret", "enabled": True},
            domain_id=domain_id,
        )
        ids[f"{d}_{user.upper()}_ID"] = user_id
        if role_id:
            call("PUT", f"/domains/{domain_id}/users/{user_id}/roles/{role_id}")
            call("PUT", f"/projects/{project_id}/users/{user_id}/roles/{role_id}")

# Written whole or not at all: start.sh takes its presence for "seeded".
with open(IDS_FILE + ".tmp", "w") as f:
    for k, v in ids.items():
        f.write(f"{k}={v}\n")
os.replace(IDS_FILE + ".tmp", IDS_FILE)
