//! The one table of the service's operations. The router, the operation a request is
//! counted and authenticated as, the metrics' labels and the OpenAPI document's paths are
//! all read from [`ROUTES`]; each operation's schema stays with its handler, in its
//! `#[utoipa::path]`.

use axum::http::Method;
use axum::routing::{on, MethodFilter, MethodRouter};
use utoipa::openapi::path::{HttpMethod, Operation as OpenApiOperation};

use super::{broker, events, handlers, rewrap, AppState};
use crate::metrics::Operation;

/// A method the table routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET, and HEAD answered by the GET handler (as axum's `get`).
    Get,
    Put,
    Post,
    Delete,
}

impl Verb {
    pub fn method(self) -> Method {
        match self {
            Verb::Get => Method::GET,
            Verb::Put => Method::PUT,
            Verb::Post => Method::POST,
            Verb::Delete => Method::DELETE,
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Put => MethodFilter::PUT,
            Verb::Post => MethodFilter::POST,
            Verb::Delete => MethodFilter::DELETE,
        }
    }

    /// The method as the OpenAPI document names it.
    pub fn http_method(self) -> HttpMethod {
        match self {
            Verb::Get => HttpMethod::Get,
            Verb::Put => HttpMethod::Put,
            Verb::Post => HttpMethod::Post,
            Verb::Delete => HttpMethod::Delete,
        }
    }
}

/// The path, methods and description of an operation, as its handler's
/// `#[utoipa::path]` gives them.
pub type Documented = (String, Vec<HttpMethod>, OpenApiOperation);

/// Who may call a route.
#[derive(Clone, Copy)]
pub enum Access {
    /// One of the API's operations: its callers authenticate, with an `X-Auth-Token` or
    /// an AK/SK signature (verified before the handler runs), and the OpenAPI document
    /// describes it, from its handler's annotation.
    Api(fn() -> Documented),
    /// Anyone, and the document does not list it: probes, metrics, the document.
    Open,
}

/// One operation: a method on a path, served by a handler.
pub struct Route {
    pub operation: Operation,
    pub method: Verb,
    /// As axum matches it (`{name}` for a path parameter).
    pub path: &'static str,
    /// The OpenAPI operation id of an API operation, and every operation's label in
    /// `/metrics`.
    pub id: &'static str,
    pub access: Access,
    handler: fn(MethodFilter) -> MethodRouter<AppState>,
}

impl Route {
    /// Its callers authenticate (see [`Access::Api`]).
    pub fn is_api(&self) -> bool {
        matches!(self.access, Access::Api(_))
    }

    /// Its handler, on its method only.
    pub fn method_router(&self) -> MethodRouter<AppState> {
        (self.handler)(self.method.filter())
    }
}

/// How an [`Access::Api`] operation's annotation is read: as `#[derive(OpenApi)]` reads
/// the handlers its `paths(...)` lists (and `utoipa_axum::routes!` too), the operation's
/// tags (`tag = ...`) given apart.
fn documented<P: utoipa::Path + for<'t> utoipa::__dev::Tags<'t>>() -> Documented {
    let mut operation = P::operation();
    let tags = P::tags();
    if !tags.is_empty() {
        let into = operation.tags.get_or_insert_with(Vec::new);
        into.extend(tags.iter().map(ToString::to_string));
    }
    (P::path(), P::methods(), operation)
}

const SETTING: &str = "/v4/tenants/{tenant_id}/repo-encryption/setting";
const GRANT: &str = "/v4/tenants/{tenant_id}/repo-encryption/kms-grant";
const CMKS: &str = "/v4/tenants/{tenant_id}/repo-encryption/cmks";
const CMK_REPOSITORIES: &str = "/v4/tenants/{tenant_id}/repo-encryption/cmks/{key_id}/repositories";
const REPOSITORIES: &str = "/v4/tenants/{tenant_id}/repo-encryption/repositories";
const DATA_KEY: &str = "/v4/tenants/{tenant_id}/repo-encryption/repositories/{repo_id}/data-key";
const REWRAP: &str = "/v4/tenants/{tenant_id}/repo-encryption/rewrap";
const REWRAP_JOB: &str = "/v4/tenants/{tenant_id}/repo-encryption/rewrap/{job_id}";

/// Every operation the service has. A request that matches none (no route, or a method
/// its route does not have) is [`Operation::Other`].
pub static ROUTES: [Route; 19] = [
    Route {
        operation: Operation::ShowSetting,
        method: Verb::Get,
        path: SETTING,
        id: "ShowTenantRepoEncryptionSetting",
        access: Access::Api(documented::<handlers::__path_show_setting>),
        handler: |m| on(m, handlers::show_setting),
    },
    Route {
        operation: Operation::UpdateSetting,
        method: Verb::Put,
        path: SETTING,
        id: "UpdateTenantRepoEncryptionSetting",
        access: Access::Api(documented::<handlers::__path_update_setting>),
        handler: |m| on(m, handlers::update_setting),
    },
    Route {
        operation: Operation::ShowGrant,
        method: Verb::Get,
        path: GRANT,
        id: "ShowTenantKmsGrant",
        access: Access::Api(documented::<handlers::__path_show_grant>),
        handler: |m| on(m, handlers::show_grant),
    },
    Route {
        operation: Operation::CreateGrant,
        method: Verb::Post,
        path: GRANT,
        id: "CreateTenantKmsGrant",
        access: Access::Api(documented::<handlers::__path_create_grant>),
        handler: |m| on(m, handlers::create_grant),
    },
    Route {
        operation: Operation::ShowTenantSetting,
        method: Verb::Get,
        path: "/v4/tenant/setting",
        id: "ShowProjectTenantSettings",
        access: Access::Api(documented::<handlers::__path_show_tenant_setting>),
        handler: |m| on(m, handlers::show_tenant_setting),
    },
    Route {
        operation: Operation::ListCmks,
        method: Verb::Get,
        path: CMKS,
        id: "ListTenantCmks",
        access: Access::Api(documented::<broker::__path_list_cmks>),
        handler: |m| on(m, broker::list_cmks),
    },
    Route {
        operation: Operation::ListRepositories,
        method: Verb::Get,
        path: REPOSITORIES,
        id: "ListTenantEncryptedRepositories",
        access: Access::Api(documented::<broker::__path_list_repositories>),
        handler: |m| on(m, broker::list_repositories),
    },
    Route {
        operation: Operation::RegisterRepository,
        method: Verb::Post,
        path: REPOSITORIES,
        id: "RegisterTenantRepository",
        access: Access::Api(documented::<broker::__path_register_repository>),
        handler: |m| on(m, broker::register_repository),
    },
    Route {
        operation: Operation::ShowDataKey,
        method: Verb::Get,
        path: DATA_KEY,
        id: "ShowTenantRepositoryDataKey",
        access: Access::Api(documented::<broker::__path_show_data_key>),
        handler: |m| on(m, broker::show_data_key),
    },
    Route {
        operation: Operation::DeleteDataKey,
        method: Verb::Delete,
        path: DATA_KEY,
        id: "DeleteTenantRepositoryDataKey",
        access: Access::Api(documented::<broker::__path_delete_data_key>),
        handler: |m| on(m, broker::delete_data_key),
    },
    Route {
        operation: Operation::CreateRewrap,
        method: Verb::Post,
        path: REWRAP,
        id: "CreateTenantRewrapJob",
        access: Access::Api(documented::<rewrap::__path_create_rewrap>),
        handler: |m| on(m, rewrap::create_rewrap),
    },
    Route {
        operation: Operation::ShowRewrap,
        method: Verb::Get,
        path: REWRAP_JOB,
        id: "ShowTenantRewrapJob",
        access: Access::Api(documented::<rewrap::__path_show_rewrap>),
        handler: |m| on(m, rewrap::show_rewrap),
    },
    Route {
        operation: Operation::ListCmkRepositories,
        method: Verb::Get,
        path: CMK_REPOSITORIES,
        id: "ListTenantCmkRepositories",
        access: Access::Api(documented::<broker::__path_list_cmk_repositories>),
        handler: |m| on(m, broker::list_cmk_repositories),
    },
    Route {
        operation: Operation::DeleteGrant,
        method: Verb::Delete,
        path: GRANT,
        id: "DeleteTenantKmsGrant",
        access: Access::Api(documented::<handlers::__path_delete_grant>),
        handler: |m| on(m, handlers::delete_grant),
    },
    Route {
        operation: Operation::Events,
        method: Verb::Get,
        path: "/v4/repo-encryption/events",
        id: "ListRepoEncryptionEvents",
        access: Access::Api(documented::<events::__path_events>),
        handler: |m| on(m, events::events),
    },
    Route {
        operation: Operation::Health,
        method: Verb::Get,
        path: "/healthz",
        id: "healthz",
        access: Access::Open,
        handler: |m| on(m, handlers::healthz),
    },
    Route {
        operation: Operation::Ready,
        method: Verb::Get,
        path: "/readyz",
        id: "readyz",
        access: Access::Open,
        handler: |m| on(m, handlers::readyz),
    },
    Route {
        operation: Operation::Metrics,
        method: Verb::Get,
        path: "/metrics",
        id: "metrics",
        access: Access::Open,
        handler: |m| on(m, handlers::metrics),
    },
    Route {
        operation: Operation::OpenApi,
        method: Verb::Get,
        path: "/openapi.json",
        id: "openapi",
        access: Access::Open,
        handler: |m| on(m, handlers::openapi),
    },
];

/// The route of an operation (`None` for [`Operation::Other`]).
pub fn route_of(operation: Operation) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.operation == operation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_has_one_route_and_each_route_one_method_path_and_id() {
        for op in Operation::ALL {
            let routes = ROUTES.iter().filter(|r| r.operation == op).count();
            let expected = usize::from(op != Operation::Other);
            assert_eq!(routes, expected, "{op:?}");
        }
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    (a.method, a.path) != (b.method, b.path),
                    "{} {}",
                    a.method.method(),
                    a.path
                );
                assert_ne!(a.id, b.id);
            }
        }
    }

    #[test]
    fn each_api_operation_is_documented_at_its_route() {
        for route in &ROUTES {
            let Access::Api(doc) = route.access else {
                continue;
            };
            let (path, methods, operation) = doc();
            assert_eq!(path, route.path, "{}", route.id);
            assert!(methods == [route.method.http_method()], "{}", route.id);
            assert_eq!(operation.operation_id.as_deref(), Some(route.id));
            assert_eq!(
                operation.tags,
                Some(vec!["Tenant".to_owned()]),
                "{}",
                route.id
            );
        }
    }
}
