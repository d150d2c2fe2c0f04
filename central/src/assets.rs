//! The browser demo (`web/`), embedded into the binary and served at `/`.

use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "$CARGO_MANIFEST_DIR/../web/"]
#[include = "*.html"]
#[include = "*.js"]
#[include = "*.css"]
#[include = "*.svg"]
#[exclude = "node_modules/*"]
#[exclude = "tests/*"]
struct Web;

/// The content type served for a file name.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// The embedded file for a request path (`/` is `index.html`).
pub fn lookup(path: &str) -> Option<(&'static str, Vec<u8>)> {
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_owned()
    };
    let file = Web::get(&path)?;
    Some((content_type(&path), file.data.into_owned()))
}

/// Axum fallback: serves the demo's files, 404 otherwise.
pub async fn serve(uri: Uri) -> Response {
    match lookup(uri.path()) {
        Some((ct, body)) => (
            [
                (header::CONTENT_TYPE, ct),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "not found\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_index_html_and_only_web_files_are_embedded() {
        let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
        let has_index = web.join("index.html").exists();
        assert_eq!(lookup("/").is_some(), has_index);
        if let Some((ct, body)) = lookup("/") {
            assert_eq!(ct, "text/html; charset=utf-8");
            assert!(!body.is_empty());
        }
        assert!(lookup("/nope.html").is_none());
        assert!(lookup("/../Cargo.toml").is_none());
        assert!(lookup("/package.json").is_none());
        for name in Web::iter() {
            assert!(!name.starts_with("node_modules/"), "{name}");
            assert!(!name.starts_with("tests/"), "{name}");
            assert_ne!(content_type(&name), "application/octet-stream", "{name}");
            assert!(lookup(&format!("/{name}")).is_some(), "{name}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("a.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("a.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("a.svg"), "image/svg+xml");
    }
}
