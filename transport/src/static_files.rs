//! The browser chat page, embedded in the binary: `GET /` and its assets.
//!
//! Plain HTML, CSS and JavaScript written for hubbub (`transport/static/`),
//! compiled in with `include_bytes!`: no build step, nothing fetched from
//! elsewhere. The page speaks the Centrifugo protocol to
//! `/connection/websocket` on its own origin.
//!
//! Every asset is served with a strict `Content-Security-Policy` (only
//! same-origin scripts, styles and connections; no inline script or style,
//! no plugins, no framing), `X-Content-Type-Options: nosniff`, and a strong
//! `ETag` with `Cache-Control: no-cache`, so browsers revalidate and a new
//! binary's page is picked up at once (`304` when unchanged).

use bytes::Bytes;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{HeaderMap, Response, StatusCode};

use crate::http::Body;

/// The policy every asset is served with. `connect-src 'self'` admits
/// `ws:`/`wss:` to the page's own host and port (CSP Level 3), and nothing
/// else: the page talks to the server that served it.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; \
    object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// One embedded file.
pub struct Asset {
    /// The request path it answers.
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Every file of the page, by path.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../static/index.html"),
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../static/app.css"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../static/app.js"),
    },
    Asset {
        path: "/centrifuge-client.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../static/centrifuge-client.js"),
    },
];

/// The asset served at `path`, if any.
#[must_use]
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// FNV-1a, 64 bits: enough to tell two versions of a file apart.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

impl Asset {
    /// The strong validator of this file's bytes, quoted.
    #[must_use]
    pub fn etag(&self) -> String {
        format!("\"{:016x}-{:x}\"", fnv1a(self.body), self.body.len())
    }

    /// The response to a `GET` (or `HEAD`: hyper leaves the body out) with
    /// these request headers: `200` with the file, or `304` when
    /// `If-None-Match` names its current `ETag` (or is `*`).
    #[must_use]
    pub fn respond(&self, request: &HeaderMap) -> Response<Body> {
        let etag = self.etag();
        let matches = request
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*");
        let mut response = if matches {
            let mut r = Response::new(Body::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            let mut r = Response::new(Body::new(Bytes::from_static(self.body)));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
            r
        };
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&etag) {
            headers.insert(ETAG, value);
        }
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
        );
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_and_the_page_links_only_embedded_files() {
        for asset in ASSETS {
            assert!(find(asset.path).is_some(), "{}", asset.path);
        }
        assert!(find("/index.html").is_none() && find("/nope.js").is_none());
        let page = std::str::from_utf8(find("/").map_or(&[][..], |a| a.body)).unwrap_or("");
        for needle in ["src=\"/app.js\"", "href=\"/app.css\""] {
            assert!(page.contains(needle), "index.html lacks {needle}");
        }
        // Nothing from elsewhere, and no inline script the CSP would block.
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap_or("");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{}",
                asset.path
            );
        }
        assert!(!page.contains("<script>") && !page.contains(" style="));
    }

    #[test]
    fn etags_differ_between_files_and_match_revalidation() {
        let a = find("/app.js").map(Asset::etag);
        let b = find("/app.css").map(Asset::etag);
        assert_ne!(a, b);
        let Some(asset) = find("/") else {
            panic!("no page at /");
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            IF_NONE_MATCH,
            HeaderValue::from_str(&asset.etag()).unwrap_or(HeaderValue::from_static("x")),
        );
        assert_eq!(asset.respond(&headers).status(), StatusCode::NOT_MODIFIED);
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(asset.respond(&headers).status(), StatusCode::OK);
    }
}
