//! The CORS policy of the browser-facing services (auth, gateway): exactly the configured
//! origins; in development with no list, any origin (without credentials); outside
//! development never `*`, and no list means no cross-origin access.

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Environment;
use crate::service::ConfigProblem;

/// How long browsers may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer for `origins` (the service's `cors_origins`) allowing `methods` with the
/// `Authorization` and `Content-Type` headers; `None` when no cross-origin access is allowed.
/// Refuses `*` outside development and origins that are not valid header values.
pub fn cors_layer(
    origins: &[String],
    methods: &[Method],
    environment: Environment,
) -> Result<Option<CorsLayer>, ConfigProblem> {
    let base = CorsLayer::new()
        .allow_methods(methods.to_vec())
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(PREFLIGHT_MAX_AGE);
    let origins: Vec<&str> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    let development = environment == Environment::Development;
    if origins.contains(&"*") {
        if development {
            return Ok(Some(base.allow_origin(AllowOrigin::any())));
        }
        return Err(ConfigProblem::new(
            "cors_origins must list origins; \"*\" is only allowed in development",
        ));
    }
    if origins.is_empty() {
        return Ok(development.then(|| base.allow_origin(AllowOrigin::any())));
    }
    let mut list = Vec::new();
    for origin in origins {
        let value = HeaderValue::from_str(origin.trim_end_matches('/'))
            .map_err(|_| ConfigProblem(format!("invalid CORS origin {origin:?}")))?;
        list.push(value);
    }
    Ok(Some(base.allow_origin(AllowOrigin::list(list))))
}

/// `app` behind the CORS layer for `origins` (see [`cors_layer`]). The service's `validate`
/// already refused origins that cannot work, so a refusal here only serves without CORS.
pub fn with_cors(
    app: Router,
    origins: &[String],
    methods: &[Method],
    environment: Environment,
) -> Router {
    match cors_layer(origins, methods, environment) {
        Ok(Some(cors)) => app.layer(cors),
        _ => app,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_star_is_only_allowed_in_development_and_no_list_opens_only_development() {
        let star = vec!["*".to_owned()];
        assert!(cors_layer(&star, &[Method::GET], Environment::Production).is_err());
        assert!(cors_layer(&star, &[Method::GET], Environment::Development).is_ok());
        assert!(
            cors_layer(&[], &[Method::GET], Environment::Production)
                .unwrap()
                .is_none()
        );
        assert!(
            cors_layer(&[], &[Method::GET], Environment::Development)
                .unwrap()
                .is_some()
        );
        let bad = vec!["https://a\nb".to_owned()];
        assert!(cors_layer(&bad, &[Method::GET], Environment::Production).is_err());
    }
}
