//! The pages' templates (askama, compiled in, HTML-escaped by default) and the view models they
//! render: plain strings and flags worked out by `pages`, so the templates hold no logic
//! beyond loops and conditions.

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::assets;

/// What every page's frame shows.
pub struct Chrome {
    pub title: String,
    pub css: String,
    pub js: String,
    pub icon: String,
    /// Who is logged in; `None` on the login page.
    pub who: Option<String>,
    pub csrf: String,
    pub lab: bool,
    /// A message about what the last action did.
    pub notice: Option<String>,
}

impl Chrome {
    pub fn new(title: impl Into<String>, who: Option<String>, csrf: String, lab: bool) -> Chrome {
        Chrome {
            title: title.into(),
            css: assets::url("ui.css"),
            js: assets::url("ui.js"),
            icon: assets::url("favicon.svg"),
            who,
            csrf,
            lab,
            notice: None,
        }
    }
}

/// An option of a `<select>`.
pub struct Choice {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

impl Choice {
    /// Options with one selected; `blank` first (value "") when given.
    pub fn list(values: &[&str], selected: &str, blank: Option<&str>) -> Vec<Choice> {
        let mut choices = Vec::new();
        if let Some(label) = blank {
            choices.push(Choice {
                value: String::new(),
                label: label.into(),
                selected: selected.is_empty(),
            });
        }
        choices.extend(values.iter().map(|value| Choice {
            value: (*value).into(),
            label: (*value).into(),
            selected: *value == selected,
        }));
        choices
    }
}

/// One row of the image list.
pub struct ImageRow {
    pub id: String,
    pub name: String,
    pub status: String,
    /// Still changing (queued, saving, importing, uploading): the script polls it.
    pub live: bool,
    pub visibility: String,
    pub protected: bool,
    pub disk_format: String,
    pub size: String,
    pub created: String,
    pub tags: String,
    pub owner: String,
}

#[derive(Template)]
#[template(path = "ui/list.html")]
pub struct ListPage {
    pub chrome: Chrome,
    pub rows: Vec<ImageRow>,
    pub show_owner: bool,
    pub name: String,
    pub tag: String,
    pub limit: String,
    pub statuses: Vec<Choice>,
    pub visibilities: Vec<Choice>,
    pub disk_formats: Vec<Choice>,
    pub protected: Vec<Choice>,
    pub member_statuses: Vec<Choice>,
    pub error: Option<String>,
    pub previous: Option<String>,
    pub next: Option<String>,
    pub usage: Option<String>,
    /// "Project NAME, ID …": what another project needs to share images with this one.
    pub project: String,
    pub pending_shares: usize,
}

/// The values a create or edit form shows (what was stored, or what was typed).
#[derive(Default)]
pub struct ImageForm {
    pub name: String,
    pub description: String,
    pub min_disk: String,
    pub min_ram: String,
    pub architecture: String,
    pub os_distro: String,
    pub os_version: String,
    pub protected: bool,
    pub os_hidden: bool,
    pub tags: String,
    pub properties: String,
    pub kernel_id: String,
    pub ramdisk_id: String,
    pub url: String,
}

#[derive(Template)]
#[template(path = "ui/create.html")]
pub struct CreatePage {
    pub chrome: Chrome,
    pub form: ImageForm,
    pub disk_formats: Vec<Choice>,
    pub container_formats: Vec<Choice>,
    pub visibilities: Vec<Choice>,
    pub web_download: bool,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/edit.html")]
pub struct EditPage {
    pub chrome: Chrome,
    pub id: String,
    pub form: ImageForm,
    pub disk_formats: Vec<Choice>,
    pub container_formats: Vec<Choice>,
    pub visibilities: Vec<Choice>,
    pub read_only: Vec<(String, String)>,
    pub updated_at: String,
    pub error: Option<String>,
}

pub struct MemberRow {
    pub member: String,
    pub status: String,
    pub updated: String,
}

pub struct TaskRow {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub message: String,
    pub updated: String,
}

#[derive(Template)]
#[template(path = "ui/details.html")]
pub struct DetailsPage {
    pub chrome: Chrome,
    pub id: String,
    pub name: String,
    pub fields: Vec<(String, String)>,
    pub status: String,
    pub live: bool,
    pub properties: Vec<(String, String)>,
    pub tags: Vec<String>,
    pub can_modify: bool,
    pub can_upload: bool,
    pub can_download: bool,
    pub can_deactivate: bool,
    pub can_reactivate: bool,
    /// The image's members, when the caller may see them (shared images).
    pub members: Option<Vec<MemberRow>>,
    pub can_add_members: bool,
    /// The caller's own share of someone else's image, and its status.
    pub my_share: Option<String>,
    pub tasks: Vec<TaskRow>,
    pub commands: Vec<String>,
    pub upload_commands: Vec<String>,
}

#[derive(Template)]
#[template(path = "ui/delete.html")]
pub struct DeletePage {
    pub chrome: Chrome,
    pub id: String,
    pub name: String,
    pub protected: bool,
}

#[derive(Template)]
#[template(path = "ui/login.html")]
pub struct LoginPage {
    pub chrome: Chrome,
    pub next: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/error.html")]
pub struct ErrorPage {
    pub chrome: Chrome,
    pub status: String,
    pub message: String,
    pub back: Option<String>,
}

/// A rendered page with its status; a template that fails to render is a 500.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => {
            let mut response = (status, html).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        Err(error) => {
            tracing::error!(%error, "a UI template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be rendered.",
            )
                .into_response()
        }
    }
}

/// An error page outside any session (no header links, no logout).
pub fn bare_error(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        chrome: Chrome::new(
            super::super::error::title(status),
            None,
            String::new(),
            false,
        ),
        status: format!("{} {}", status.as_u16(), super::super::error::title(status)),
        message: message.into(),
        back: None,
    };
    render(status, &page)
}

/// The login page.
pub fn login(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let page = LoginPage {
        chrome: Chrome::new("Log in", None, String::new(), false),
        next: next.into(),
        error: error.map(str::to_owned),
    };
    render(status, &page)
}

/// Bytes for people: `1.5 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(200 << 20), "200.0 MiB");
        assert_eq!(human_size(5 << 40), "5.0 TiB");
    }

    #[test]
    fn markup_in_values_is_escaped() {
        let page = ErrorPage {
            chrome: Chrome::new("<b>t</b>", None, String::new(), false),
            status: "400".into(),
            message: "<script>alert(1)</script>\" onmouseover=\"x".into(),
            back: Some("/ui/\"><img src=x>".into()),
        };
        let html = page.render().unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x>"), "{html}");
        assert!(!html.contains("<b>t</b>"), "{html}");
        assert!(html.contains("&#60;script&#62;"), "{html}");
    }
}
