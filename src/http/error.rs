//! `http::Error`: the only error type that knows status codes, and Glance's error bodies.
//!
//! Handlers return `Error`; its response carries the status and message in an extension and no
//! body. The `finish_response` middleware in `http::mod` then renders Glance's body, HTML by
//! default and JSON when the request accepts `application/json`, because only it sees the
//! request's `Accept` header. Internal details (storage errors) go to the log, never to clients.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::blob::BlobError;
use crate::kv::KvError;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug)]
pub struct Error {
    pub status: StatusCode,
    pub message: String,
    /// `Allow` for 405, `Accept-Patch` for 415 on PATCH.
    pub header: Option<(header::HeaderName, HeaderValue)>,
}

impl Error {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Error {
        Error {
            status,
            message: message.into(),
            header: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::new(StatusCode::FORBIDDEN, message)
    }

    /// Glance's 403 for a policy refusal of `action`.
    pub fn not_authorized(action: &str) -> Error {
        Error::forbidden(format!(
            "You are not authorized to complete {action} action."
        ))
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(StatusCode::CONFLICT, message)
    }

    pub fn too_large(message: impl Into<String>) -> Error {
        Error::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    pub fn internal() -> Error {
        Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server has either erred or is incapable of performing the requested operation.",
        )
    }

    /// 404 for an image id that is malformed, unknown or not visible to the caller.
    pub fn no_image(id: &str) -> Error {
        Error::not_found(format!("No image found with ID {id}"))
    }

    /// 405 with the methods the resource allows.
    pub fn method_not_allowed(method: &str, allow: &'static str) -> Error {
        Error {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("The method {method} is not allowed for this resource."),
            header: Some((header::ALLOW, HeaderValue::from_static(allow))),
        }
    }

    pub fn with_header(self, name: header::HeaderName, value: &'static str) -> Error {
        self.with_header_value(name, HeaderValue::from_static(value))
    }

    pub fn with_header_value(mut self, name: header::HeaderName, value: HeaderValue) -> Error {
        self.header = Some((name, value));
        self
    }
}

/// Seconds a client is asked to wait after a 503.
pub const RETRY_AFTER: &str = "5";

impl Error {
    /// 503 with `Retry-After`: the service cannot do this now but will again soon.
    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::new(StatusCode::SERVICE_UNAVAILABLE, message)
            .with_header(header::RETRY_AFTER, RETRY_AFTER)
    }
}

impl From<crate::store::CopyRefusal> for Error {
    fn from(refusal: crate::store::CopyRefusal) -> Error {
        use crate::store::CopyRefusal;
        match refusal {
            CopyRefusal::NotInStore(_) => Error::not_found(refusal.to_string()),
            CopyRefusal::UnknownStore(_) | CopyRefusal::NotActive | CopyRefusal::OnlyCopy => {
                Error::conflict(refusal.to_string())
            }
        }
    }
}

impl From<KvError> for Error {
    fn from(error: KvError) -> Error {
        if error.is_io() {
            // The store logs the failure once; a full disk must not flood the log.
            tracing::debug!(%error, "metadata store unavailable");
            return Error::unavailable(
                "The image store cannot save changes right now (its disk is full or failing); try again later.",
            );
        }
        tracing::error!(%error, "metadata store failed");
        Error::internal()
    }
}

impl From<BlobError> for Error {
    fn from(error: BlobError) -> Error {
        match error {
            BlobError::NoSpace => Error::too_large(
                "There is not enough space left in the image store for this image.",
            ),
            BlobError::TooLarge { limit } => {
                Error::too_large(format!("Image data is larger than the {limit}-byte limit"))
            }
            BlobError::BodyFailed(detail) => {
                tracing::info!(%detail, "upload cut off");
                Error::bad_request("The image data ended before the request was complete")
            }
            BlobError::Io(error) if crate::blob::is_unavailable(&error) => {
                tracing::warn!(%error, "blob store unavailable");
                Error::unavailable(
                    "The image store's object storage cannot be reached right now; try again later.",
                )
            }
            BlobError::Io(error) => {
                tracing::error!(%error, "blob store failed");
                Error::internal()
            }
        }
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Error {
        match error {
            StoreError::Kv(error) => error.into(),
            StoreError::Blob(error) => error.into(),
            StoreError::Busy => {
                Error::unavailable("Too many image transfers are in progress; try again later.")
            }
            StoreError::NoRoom { needed, available } => Error::too_large(format!(
                "The image data ({needed} bytes) does not fit in the image store ({available} bytes available)."
            )),
            StoreError::SizeMismatch { .. } => Error::bad_request(error.to_string()),
            StoreError::NoImage(id) => Error::no_image(&id.to_string()),
            StoreError::Gone => Error::new(
                StatusCode::GONE,
                "The image was deleted while its data was uploading",
            ),
            StoreError::Changed => {
                Error::conflict("The image changed while its data was uploading")
            }
            StoreError::Quota(exceeded) => Error::too_large(exceeded.to_string()),
            StoreError::Damaged(_) => Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The image data failed verification on the server and is not served; an operator \
                 can heal it by uploading the same data again (see `ocellus check`).",
            ),
        }
    }
}

/// The part of an error the rendering middleware needs.
#[derive(Clone, Debug)]
pub struct ErrorMessage(pub String);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some((name, value)) = self.header {
            response.headers_mut().insert(name, value);
        }
        response.extensions_mut().insert(ErrorMessage(self.message));
        response
    }
}

/// The reason phrase Glance (webob) uses for a status.
pub fn title(status: StatusCode) -> &'static str {
    match status.as_u16() {
        413 => "Request Entity Too Large",
        416 => "Request Range Not Satisfiable",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

/// Glance's message text: the explanation followed by webob's fixed trailer.
fn decorated(message: &str) -> String {
    format!("{message}<br /><br />\n\n\n")
}

/// The JSON error body.
pub fn json_body(status: StatusCode, message: &str) -> String {
    serde_json::json!({
        "message": decorated(message),
        "code": format!("{} {}", status.as_u16(), title(status)),
        "title": title(status),
    })
    .to_string()
}

/// The HTML error body, as webob renders it.
pub fn html_body(status: StatusCode, message: &str) -> String {
    let heading = format!("{} {}", status.as_u16(), title(status));
    format!(
        "<html>\n <head>\n  <title>{heading}</title>\n </head>\n <body>\n  <h1>{heading}</h1>\n  {}\n </body>\n</html>",
        decorated(&escape_html(message))
    )
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#x27;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_matches_webob_layout() {
        let body = html_body(StatusCode::NOT_FOUND, "The resource could not be found.");
        assert_eq!(body.len(), 154);
        assert!(body.contains("<title>404 Not Found</title>"));
        assert_eq!(
            html_body(StatusCode::FORBIDDEN, "Attribute 'status' is read-only.").len(),
            164
        );
    }

    #[test]
    fn json_matches_glance_shape() {
        let body: serde_json::Value = serde_json::from_str(&json_body(
            StatusCode::NOT_FOUND,
            "No image found with ID x",
        ))
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "message": "No image found with ID x<br /><br />\n\n\n",
                "code": "404 Not Found",
                "title": "Not Found"
            })
        );
    }
}
