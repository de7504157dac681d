//! The UI's handlers. Each works out its caller from the session (`Ui`) and then calls what
//! `/v2` calls: the same handlers (tags, members, deactivate, upload, download, usage, tasks)
//! or the same functions (`insert_new_image`, `list_page`, `modify_image` with `apply_patch`,
//! `remove_image`), so the policy rules, validation, quotas and messages are the API's own.
//! Every POST answers 303 to a page, or the page again with the API's error.

use axum::Json;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Value, json};

use super::super::images::{self, PatchDialect, apply_patch, load_visible, modify_image};
use super::super::schemas::{CONTAINER_FORMATS, DISK_FORMATS};
use super::super::wire::{checksum, format_time, hex};
use super::super::{AppState, BaseUrl, Error, image_data, import, list_query, members, tags};
use super::forms::{self, Form};
use super::session::{Posted, Ui};
use super::views::{
    self, Choice, Chrome, CreatePage, DeletePage, DetailsPage, EditPage, ErrorPage, ImageForm,
    ImageRow, ListPage, MemberRow, TaskRow,
};
use crate::kv::{ImageRecord, ImageStatus, MemberStatus};

/// The statuses an image can have, for the list's filter.
const STATUSES: [&str; 9] = [
    "queued",
    "saving",
    "uploading",
    "importing",
    "active",
    "deactivated",
    "killed",
    "pending_delete",
    "deleted",
];

/// The query parameters the list form sends on to `list_query`.
const LIST_KEYS: [&str; 9] = [
    "name",
    "status",
    "visibility",
    "disk_format",
    "tag",
    "protected",
    "member_status",
    "limit",
    "marker",
];

/// What a `?notice=` code says (codes only: nothing from the URL is echoed).
fn notice(code: &str) -> Option<&'static str> {
    Some(match code {
        "created" => "Image created.",
        "saved" => "Changes saved.",
        "unchanged" => "Nothing to save: the form matched the image.",
        "tag-added" => "Tag added.",
        "tag-removed" => "Tag removed.",
        "member-added" => "Shared with the project; it appears there once that project accepts.",
        "member-removed" => "No longer shared with that project.",
        "accepted" => "Share accepted: the image is in your list.",
        "rejected" => "Share rejected.",
        "deactivated" => "Image deactivated: its data cannot be downloaded until reactivated.",
        "reactivated" => "Image reactivated.",
        "deleted" => "Image deleted.",
        "uploaded" => "Upload complete.",
        "import-started" => "Import started: the status below follows it.",
        _ => return None,
    })
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn chrome(ui: &Ui, title: impl Into<String>, query: Option<&str>) -> Chrome {
    let mut chrome = Chrome::new(title, Some(ui.who()), ui.session.csrf.clone(), ui.lab);
    chrome.notice = query_pairs(query)
        .into_iter()
        .find(|(key, _)| key == "notice")
        .and_then(|(_, code)| notice(&code))
        .map(str::to_owned);
    chrome
}

/// An API error as a page, with a way back.
fn error_page(ui: &Ui, error: Error, back: Option<String>) -> Response {
    let status = error.status;
    let page = ErrorPage {
        chrome: chrome(ui, super::super::error::title(status), None),
        status: format!("{} {}", status.as_u16(), super::super::error::title(status)),
        message: error.message,
        back,
    };
    let mut response = views::render(status, &page);
    if let Some((name, value)) = error.header
        && name == header::RETRY_AFTER
    {
        response.headers_mut().insert(name, value);
    }
    response
}

fn image_url(id: &str, notice: &str) -> String {
    format!("/ui/images/{id}?notice={notice}")
}

fn display_name(record: &ImageRecord) -> String {
    record
        .name
        .clone()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| record.id.to_string())
}

fn live(status: ImageStatus) -> bool {
    matches!(
        status,
        ImageStatus::Queued | ImageStatus::Saving | ImageStatus::Uploading | ImageStatus::Importing
    )
}

fn when(micros: i64) -> String {
    format_time(micros).replace('T', " ").replace('Z', " UTC")
}

/// Visibility options the caller may choose (public only with the publicize rule).
fn visibilities(ui: &Ui, selected: &str) -> Vec<Choice> {
    let mut values = vec!["private", "shared", "community"];
    if ui.caller.can_publicize() || selected == "public" {
        values.insert(0, "public");
    }
    Choice::list(&values, selected, None)
}

/// `GET /ui/`: the image list, filtered and paged by the same code as `GET /v2/images`.
pub async fn list(State(state): State<AppState>, ui: Ui, RawQuery(query): RawQuery) -> Response {
    let pairs = query_pairs(query.as_deref());
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.trim().to_owned())
            .unwrap_or_default()
    };
    let backwards = value("dir") == "prev";
    let kept: Vec<(String, String)> = pairs
        .iter()
        .filter(|(key, value)| LIST_KEYS.contains(&key.as_str()) && !value.trim().is_empty())
        .map(|(key, value)| (key.clone(), value.trim().to_owned()))
        .collect();
    let api_query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            kept.iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )
        .finish();

    let mut error = None;
    let mut rows = Vec::new();
    let (mut previous, mut next) = (None, None);
    if !ui.caller.can_read() {
        error = Some(Error::not_authorized("get_images").message);
    } else {
        match list_query::parse(Some(&api_query)) {
            Err(refusal) => error = Some(refusal.message),
            Ok(params) => {
                let had_marker = params.marker.is_some();
                match images::list_page(&state, ui.caller.clone(), params, backwards).await {
                    Err(refusal) => error = Some(refusal.message),
                    Ok((images, more, _)) => {
                        let link = |marker: &ImageRecord, prev: bool| {
                            let mut link_pairs: Vec<(&str, &str)> = kept
                                .iter()
                                .filter(|(key, _)| key != "marker")
                                .map(|(key, value)| (key.as_str(), value.as_str()))
                                .collect();
                            let id = marker.id.to_string();
                            let mut serializer = form_urlencoded::Serializer::new(String::new());
                            serializer.extend_pairs(link_pairs.drain(..));
                            serializer.append_pair("marker", &id);
                            if prev {
                                serializer.append_pair("dir", "prev");
                            }
                            format!("/ui/?{}", serializer.finish())
                        };
                        let (has_previous, has_next) = if backwards {
                            (more, true)
                        } else {
                            (had_marker, more)
                        };
                        if has_previous && let Some(first) = images.first() {
                            previous = Some(link(first, true));
                        }
                        if has_next && let Some(last) = images.last() {
                            next = Some(link(last, false));
                        }
                        rows = images.iter().map(row).collect();
                    }
                }
            }
        }
    }

    let usage = match import::usage(State(state.clone()), ui.caller.clone()).await {
        Ok(Json(body)) => usage_line(&body),
        Err(_) => None,
    };
    let pending_shares = ui
        .caller
        .memberships
        .values()
        .filter(|status| **status == MemberStatus::Pending)
        .count();
    let page = ListPage {
        chrome: chrome(&ui, "Images", query.as_deref()),
        rows,
        show_owner: ui.caller.is_admin(),
        name: value("name"),
        tag: value("tag"),
        limit: value("limit"),
        statuses: Choice::list(&STATUSES, &value("status"), Some("any")),
        visibilities: Choice::list(
            &["public", "private", "shared", "community", "all"],
            &value("visibility"),
            Some("default"),
        ),
        disk_formats: Choice::list(DISK_FORMATS, &value("disk_format"), Some("any")),
        protected: Choice::list(&["true", "false"], &value("protected"), Some("either")),
        member_statuses: Choice::list(
            &["accepted", "pending", "rejected", "all"],
            &value("member_status"),
            Some("default (accepted)"),
        ),
        error: error.clone(),
        previous,
        next,
        usage,
        project: match &ui.key {
            Some(key) => format!(
                "Project {}, ID {} (give the ID to whoever shares images with you).",
                key.project_name, key.project_id
            ),
            None => format!("Project ID {}.", ui.caller.project_id),
        },
        pending_shares,
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    views::render(status, &page)
}

fn row(record: &ImageRecord) -> ImageRow {
    ImageRow {
        id: record.id.to_string(),
        name: display_name(record),
        status: record.status.as_str().into(),
        live: live(record.status),
        visibility: record.visibility.as_str().into(),
        protected: record.protected,
        disk_format: record.disk_format.clone().unwrap_or_default(),
        size: record
            .data
            .as_ref()
            .map(|data| views::human_size(data.size))
            .unwrap_or_default(),
        created: when(record.created_at),
        tags: record.tags.join(", "),
        owner: record.owner.clone().unwrap_or_default(),
    }
}

/// "Usage: 3 images of 100; 1.2 GiB of unlimited" from `/v2/info/usage`'s body.
fn usage_line(body: &Value) -> Option<String> {
    let usage = body.get("usage")?;
    let part = |key: &str, size: bool| -> Option<String> {
        let entry = usage.get(key)?;
        let used = entry.get("usage")?.as_u64()?;
        let limit = entry.get("limit")?.as_i64()?;
        let show = |value: u64| {
            if size {
                views::human_size(value)
            } else {
                value.to_string()
            }
        };
        let limit = if limit < 0 {
            "unlimited".to_owned()
        } else {
            show(limit as u64)
        };
        Some(format!("{} of {limit}", show(used)))
    };
    Some(format!(
        "Your project's usage: images {}; storage {}; uploads in progress {}.",
        part("image_count_total", false)?,
        part("image_size_total", true)?,
        part("image_count_uploading", false)?,
    ))
}

/// `GET /ui/images/{id}/status`: what the list and details pages poll while an image changes.
pub async fn status(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
) -> Result<Json<Value>, Error> {
    let record = load_visible(&state, &ui.caller, &id).await?;
    Ok(Json(json!({
        "status": record.status.as_str(),
        "size": record.data.as_ref().map(|data| data.size),
        "size_text": record.data.as_ref().map(|data| views::human_size(data.size)),
    })))
}

/// `GET /ui/images/{id}`.
pub async fn details(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    BaseUrl(base): BaseUrl,
    RawQuery(query): RawQuery,
) -> Response {
    let record = match load_visible(&state, &ui.caller, &id).await {
        Ok(record) => record,
        Err(error) => return error_page(&ui, error, None),
    };
    if !ui.caller.can_read() {
        return error_page(&ui, Error::not_authorized("get_image"), None);
    }
    let caller = &ui.caller;
    let can_modify = caller.can_modify(&record);
    let data = record.data.as_ref();
    let opt = |value: Option<String>| value.unwrap_or_else(|| "—".into());
    let mut fields = vec![
        ("ID".to_owned(), record.id.to_string()),
        ("Owner".into(), opt(record.owner.clone())),
        ("Visibility".into(), record.visibility.as_str().into()),
        (
            "Protected".into(),
            if record.protected { "yes" } else { "no" }.into(),
        ),
        (
            "Hidden".into(),
            if record.os_hidden { "yes" } else { "no" }.into(),
        ),
        ("Disk format".into(), opt(record.disk_format.clone())),
        (
            "Container format".into(),
            opt(record.container_format.clone()),
        ),
        (
            "Size".into(),
            opt(data.map(|data| format!("{} ({} bytes)", views::human_size(data.size), data.size))),
        ),
        (
            "Virtual size".into(),
            opt(data
                .and_then(|data| data.virtual_size)
                .map(|size| format!("{} ({size} bytes)", views::human_size(size)))),
        ),
        ("Checksum (MD5)".into(), opt(checksum(&record))),
        ("SHA-512".into(), opt(data.map(|data| hex(&data.sha512)))),
        ("Minimum disk".into(), format!("{} GB", record.min_disk)),
        ("Minimum RAM".into(), format!("{} MB", record.min_ram)),
        ("Created".into(), when(record.created_at)),
        ("Updated".into(), when(record.updated_at)),
    ];
    if let Some(data) = data {
        fields.push(("Stores".into(), data.stores.join(", ")));
    }

    let members = if record.visibility == crate::kv::Visibility::Shared {
        match members::list_members(State(state.clone()), caller.clone(), Path(id.clone())).await {
            Ok(Json(body)) => Some(
                body.get("members")
                    .and_then(Value::as_array)
                    .map(|members| {
                        members
                            .iter()
                            .map(|member| MemberRow {
                                member: text(member, "member_id"),
                                status: text(member, "status"),
                                updated: text(member, "updated_at").replace('T', " "),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Err(_) => None,
        }
    } else {
        None
    };
    let my_share = (record.owner.as_deref() != Some(caller.project_id.as_str()))
        .then(|| caller.membership(&record))
        .flatten()
        .map(|status| status.as_str().to_owned());
    let tasks =
        match import::image_tasks(State(state.clone()), caller.clone(), Path(id.clone())).await {
            Ok(Json(body)) => body
                .get("tasks")
                .and_then(Value::as_array)
                .map(|tasks| {
                    tasks
                        .iter()
                        .map(|task| TaskRow {
                            id: text(task, "id"),
                            kind: text(task, "type"),
                            status: text(task, "status"),
                            message: text(task, "message"),
                            updated: text(task, "updated_at").replace('T', " "),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };

    let file_name = safe_file_name(&record);
    let token = if ui.lab {
        ""
    } else {
        " -H \"X-Auth-Token: $OS_TOKEN\""
    };
    let commands = vec![
        format!("openstack image show {}", record.id),
        format!("openstack image save --file {file_name} {}", record.id),
        format!(
            "curl -fo {file_name}{token} {base}/v2/images/{}/file",
            record.id
        ),
    ];
    let disk_format = record.disk_format.clone().unwrap_or_else(|| "raw".into());
    let container_format = record
        .container_format
        .clone()
        .unwrap_or_else(|| "bare".into());
    let upload_commands = vec![
        format!(
            "curl -fT FILE{token} -H \"Content-Type: application/octet-stream\" {base}/v2/images/{}/file",
            record.id
        ),
        format!("glance image-upload --file FILE --progress {}", record.id),
        format!(
            "openstack image create --disk-format {disk_format} --container-format {container_format} --file FILE {}",
            shell_word(&display_name(&record))
        ),
    ];
    let page = DetailsPage {
        chrome: chrome(&ui, display_name(&record), query.as_deref()),
        id: record.id.to_string(),
        name: display_name(&record),
        fields,
        status: record.status.as_str().into(),
        live: live(record.status),
        properties: record
            .properties
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        tags: record.tags.clone(),
        can_modify,
        can_upload: can_modify && record.status == ImageStatus::Queued,
        can_download: data.is_some()
            && caller.can_download()
            && (record.status == ImageStatus::Active
                || (record.status == ImageStatus::Deactivated
                    && caller.can_download_deactivated())),
        can_deactivate: can_modify && record.status == ImageStatus::Active,
        can_reactivate: can_modify && record.status == ImageStatus::Deactivated,
        can_add_members: can_modify && record.visibility == crate::kv::Visibility::Shared,
        members,
        my_share,
        tasks,
        commands,
        upload_commands,
    };
    views::render(StatusCode::OK, &page)
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A file name for the commands and the download: the image's name reduced to safe characters.
fn safe_file_name(record: &ImageRecord) -> String {
    let name: String = display_name(record)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = name.trim_start_matches('.').to_owned();
    if name.is_empty() {
        record.id.to_string()
    } else {
        name
    }
}

/// A word a POSIX shell reads back as `text`.
fn shell_word(text: &str) -> String {
    if !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-:/".contains(&byte))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn create_view(
    ui: &Ui,
    state: &AppState,
    form: ImageForm,
    formats: (&str, &str, &str),
    error: Option<String>,
) -> CreatePage {
    let (disk, container, visibility) = formats;
    CreatePage {
        chrome: chrome(ui, "New image", None),
        form,
        disk_formats: Choice::list(DISK_FORMATS, disk, Some("(choose)")),
        container_formats: Choice::list(CONTAINER_FORMATS, container, None),
        visibilities: visibilities(ui, visibility),
        web_download: state
            .config
            .import_methods
            .iter()
            .any(|method| method == "web-download"),
        error,
    }
}

/// `GET /ui/images/new`.
pub async fn create_page(State(state): State<AppState>, ui: Ui) -> Response {
    let page = create_view(
        &ui,
        &state,
        ImageForm::default(),
        ("", "bare", "shared"),
        None,
    );
    views::render(StatusCode::OK, &page)
}

/// What a submitted create form showed, to show it again.
fn typed(form: &Form) -> ImageForm {
    let get = |name: &str| form.get(name).unwrap_or_default().to_owned();
    ImageForm {
        name: get("name"),
        description: get("description"),
        min_disk: get("min_disk"),
        min_ram: get("min_ram"),
        architecture: get("architecture"),
        os_distro: get("os_distro"),
        os_version: get("os_version"),
        protected: form.checked("protected"),
        os_hidden: form.checked("os_hidden"),
        tags: get("tags"),
        properties: get("properties"),
        kernel_id: get("kernel_id"),
        ramdisk_id: get("ramdisk_id"),
        url: get("url"),
    }
}

/// `POST /ui/images`: `POST /v2/images` (and, with a URL, `POST /import` with web-download).
pub async fn create(State(state): State<AppState>, Posted { ui, form }: Posted) -> Response {
    let again = |error: Error| {
        let formats = (
            form.get("disk_format").unwrap_or_default(),
            form.get("container_format").unwrap_or_default(),
            form.get("visibility").unwrap_or_default(),
        );
        let status = error.status;
        let page = create_view(&ui, &state, typed(&form), formats, Some(error.message));
        views::render(status, &page)
    };
    let fields = match forms::create_fields(&form) {
        Ok(fields) => fields,
        Err(message) => return again(forms::invalid(message)),
    };
    let url = form.text("url").map(str::to_owned);
    let record = match images::insert_new_image(&state, &ui.caller, &fields).await {
        Ok(record) => record,
        Err(error) => return again(error),
    };
    tracing::info!(image = %record.id, project = %ui.caller.project_id, "image created (ui)");
    let id = record.id.to_string();
    let Some(url) = url else {
        return Redirect::to(&image_url(&id, "created")).into_response();
    };
    let (parts, ()) = Request::new(()).into_parts();
    let body = json!({"method": {"name": "web-download", "uri": url}});
    match import::import_image(
        State(state.clone()),
        ui.caller.clone(),
        Path(id.clone()),
        parts,
        super::super::JsonBody(body),
    )
    .await
    {
        Ok(_) => Redirect::to(&image_url(&id, "import-started")).into_response(),
        Err(error) => error_page(&ui, error, Some(format!("/ui/images/{id}"))),
    }
}

fn edit_view(
    ui: &Ui,
    record: &ImageRecord,
    form: ImageForm,
    formats: (&str, &str, &str),
    error: Option<String>,
) -> EditPage {
    let (disk, container, visibility) = formats;
    EditPage {
        chrome: chrome(ui, format!("Edit {}", display_name(record)), None),
        id: record.id.to_string(),
        form,
        disk_formats: Choice::list(DISK_FORMATS, disk, Some("(none)")),
        container_formats: Choice::list(CONTAINER_FORMATS, container, Some("(none)")),
        visibilities: visibilities(ui, visibility),
        read_only: read_only(record),
        updated_at: record.updated_at.to_string(),
        error,
    }
}

/// What the edit form shows but cannot change: the values the server computes, and the
/// properties it reserves (`os_glance_*`, the mirror's).
fn read_only(record: &ImageRecord) -> Vec<(String, String)> {
    let mut shown = vec![("status".to_owned(), record.status.as_str().to_owned())];
    if let Some(data) = &record.data {
        shown.push(("size".into(), data.size.to_string()));
        if let Some(size) = data.virtual_size {
            shown.push(("virtual_size".into(), size.to_string()));
        }
        shown.push(("checksum".into(), hex(&data.md5)));
        shown.push(("os_hash_algo".into(), "sha512".into()));
        shown.push(("os_hash_value".into(), hex(&data.sha512)));
    }
    shown.extend(
        record
            .properties
            .iter()
            .filter(|(key, _)| !forms::editable_property(key))
            .map(|(key, value)| (key.clone(), value.clone())),
    );
    shown
}

/// `GET /ui/images/{id}/edit`.
pub async fn edit_page(State(state): State<AppState>, ui: Ui, Path(id): Path<String>) -> Response {
    let record = match load_visible(&state, &ui.caller, &id).await {
        Ok(record) => record,
        Err(error) => return error_page(&ui, error, None),
    };
    if !ui.caller.can_modify(&record) {
        return error_page(
            &ui,
            Error::not_authorized("modify_image"),
            Some(format!("/ui/images/{id}")),
        );
    }
    let form = ImageForm {
        name: record.name.clone().unwrap_or_default(),
        min_disk: record.min_disk.to_string(),
        min_ram: record.min_ram.to_string(),
        protected: record.protected,
        os_hidden: record.os_hidden,
        properties: record
            .properties
            .iter()
            .filter(|(key, _)| forms::editable_property(key))
            .map(|(key, value)| format!("{key}={value}\n"))
            .collect(),
        ..ImageForm::default()
    };
    let formats = (
        record.disk_format.as_deref().unwrap_or_default(),
        record.container_format.as_deref().unwrap_or_default(),
        record.visibility.as_str(),
    );
    let page = edit_view(&ui, &record, form, formats, None);
    views::render(StatusCode::OK, &page)
}

/// `POST /ui/images/{id}/edit`: one JSON patch of what changed, applied only if the image is
/// still as the form showed it.
pub async fn edit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { ui, form }: Posted,
) -> Response {
    let record = match load_visible(&state, &ui.caller, &id).await {
        Ok(record) => record,
        Err(error) => return error_page(&ui, error, None),
    };
    let again = |error: Error, record: &ImageRecord| {
        let status = error.status;
        let formats = (
            form.get("disk_format").unwrap_or_default(),
            form.get("container_format").unwrap_or_default(),
            form.get("visibility").unwrap_or_default(),
        );
        let mut page = edit_view(&ui, record, typed(&form), formats, Some(error.message));
        // Keep the version the user saw, so that saving again is refused again until they
        // reload: their form was made from an older image.
        page.updated_at = form.get("updated_at").unwrap_or_default().to_owned();
        views::render(status, &page)
    };
    let expected: Option<i64> = form.text("updated_at").and_then(|text| text.parse().ok());
    let Some(expected) = expected else {
        return again(
            forms::invalid("The form lacks its version; reload the page.".into()),
            &record,
        );
    };
    if expected != record.updated_at {
        return again(changed_elsewhere(), &record);
    }
    let operations = match forms::edit_operations(&record, &form) {
        Ok(operations) => operations,
        Err(message) => return again(forms::invalid(message), &record),
    };
    if operations.is_empty() {
        return Redirect::to(&image_url(&id, "unchanged")).into_response();
    }
    let limits = state.config.per_image;
    let outcome = modify_image(
        &state,
        ui.caller.clone(),
        &id,
        "modify_image",
        move |record, caller| {
            if record.updated_at != expected {
                return Err(changed_elsewhere());
            }
            apply_patch(record, PatchDialect::V2_1, &operations, caller, &limits)
        },
    )
    .await;
    match outcome {
        Ok(_) => Redirect::to(&image_url(&id, "saved")).into_response(),
        Err(error) => again(error, &record),
    }
}

fn changed_elsewhere() -> Error {
    Error::conflict(
        "The image changed after this form was opened (someone else saved, or an upload or import moved on). Nothing was saved: open Edit again to see the current values.",
    )
}

/// Runs an action's API handler and answers 303 to the image's page with `notice`, or the
/// API's error as a page.
async fn act<T>(
    ui: &Ui,
    id: &str,
    notice: &str,
    outcome: impl std::future::Future<Output = Result<T, Error>>,
) -> Response {
    match outcome.await {
        Ok(_) => Redirect::to(&image_url(id, notice)).into_response(),
        Err(error) => error_page(ui, error, Some(format!("/ui/images/{id}"))),
    }
}

/// `POST /ui/images/{id}/tags`: `PUT /v2/images/{id}/tags/{tag}`.
pub async fn add_tag(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { ui, form }: Posted,
) -> Response {
    let tag = form.text("tag").unwrap_or_default().to_owned();
    let call = tags::add_image_tag(State(state), ui.caller.clone(), Path((id.clone(), tag)));
    act(&ui, &id, "tag-added", call).await
}

/// `POST /ui/images/{id}/tags/remove`: `DELETE /v2/images/{id}/tags/{tag}`.
pub async fn remove_tag(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { ui, form }: Posted,
) -> Response {
    let tag = form.get("tag").unwrap_or_default().to_owned();
    let call = tags::delete_image_tag(State(state), ui.caller.clone(), Path((id.clone(), tag)));
    act(&ui, &id, "tag-removed", call).await
}

/// `POST /ui/images/{id}/members`: `POST /v2/images/{id}/members`.
pub async fn add_member(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { ui, form }: Posted,
) -> Response {
    let member = form.text("member").unwrap_or_default();
    let call = members::create_member(
        State(state),
        ui.caller.clone(),
        Path(id.clone()),
        super::super::JsonBody(json!({ "member": member })),
    );
    act(&ui, &id, "member-added", call).await
}

/// `POST /ui/images/{id}/members/remove`: `DELETE /v2/images/{id}/members/{member}`.
pub async fn remove_member(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { ui, form }: Posted,
) -> Response {
    let member = form.get("member").unwrap_or_default().to_owned();
    let call = members::delete_member(State(state), ui.caller.clone(), Path((id.clone(), member)));
    act(&ui, &id, "member-removed", call).await
}

/// `POST /ui/images/{id}/members/answer`: the consumer's `PUT …/members/{own project}`.
pub async fn answer_share(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { ui, form }: Posted,
) -> Response {
    let status = form.get("status").unwrap_or_default().to_owned();
    let notice = if status == "accepted" {
        "accepted"
    } else {
        "rejected"
    };
    let call = members::update_member(
        State(state),
        ui.caller.clone(),
        Path((id.clone(), ui.caller.project_id.clone())),
        super::super::JsonBody(json!({ "status": status })),
    );
    act(&ui, &id, notice, call).await
}

/// `POST /ui/images/{id}/deactivate`.
pub async fn deactivate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { ui, .. }: Posted,
) -> Response {
    let call = images::deactivate_image(State(state), ui.caller.clone(), Path(id.clone()));
    act(&ui, &id, "deactivated", call).await
}

/// `POST /ui/images/{id}/reactivate`.
pub async fn reactivate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { ui, .. }: Posted,
) -> Response {
    let call = images::reactivate_image(State(state), ui.caller.clone(), Path(id.clone()));
    act(&ui, &id, "reactivated", call).await
}

/// `GET /ui/images/{id}/delete`: the confirmation.
pub async fn delete_page(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
) -> Response {
    let record = match load_visible(&state, &ui.caller, &id).await {
        Ok(record) => record,
        Err(error) => return error_page(&ui, error, None),
    };
    if !ui.caller.can_modify(&record) {
        return error_page(
            &ui,
            Error::not_authorized("delete_image"),
            Some(format!("/ui/images/{id}")),
        );
    }
    let page = DeletePage {
        chrome: chrome(&ui, format!("Delete {}", display_name(&record)), None),
        id: record.id.to_string(),
        name: display_name(&record),
        protected: record.protected,
    };
    views::render(StatusCode::OK, &page)
}

/// `POST /ui/images/{id}/delete`: `DELETE /v2/images/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { ui, .. }: Posted,
) -> Response {
    match images::remove_image(&state, ui.caller.clone(), &id).await {
        Ok(()) => Redirect::to("/ui/?notice=deleted").into_response(),
        Err(error) => error_page(&ui, error, Some(format!("/ui/images/{id}"))),
    }
}

/// `GET /ui/images/{id}/file`: `GET /v2/images/{id}/file`, as an attachment.
pub async fn download(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let record = match load_visible(&state, &ui.caller, &id).await {
        Ok(record) => record,
        Err(error) => return error_page(&ui, error, None),
    };
    match image_data::download_image_data(
        State(state),
        ui.caller.clone(),
        Path(id.clone()),
        headers,
    )
    .await
    {
        Ok(mut response) => {
            let disposition = format!("attachment; filename=\"{}\"", safe_file_name(&record));
            if let Ok(value) = HeaderValue::from_str(&disposition) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, value);
            }
            response
        }
        Err(error) => error_page(&ui, error, Some(format!("/ui/images/{id}"))),
    }
}

/// `PUT /ui/images/{id}/file`: the script's upload, with the session's CSRF token in
/// `X-CSRF-Token`, through `PUT /v2/images/{id}/file`'s handler (streamed, hashed, checked).
pub async fn upload(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let token = request
        .headers()
        .get("x-csrf-token")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    if ui.csrf_refusal(token.as_deref()).is_some() {
        return Error::forbidden(
            "Refused: the upload's security token is missing or out of date; reload the page.",
        )
        .into_response();
    }
    match image_data::upload_image_data(State(state), ui.caller.clone(), Path(id), request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// Anything else under `/ui/`.
pub async fn not_found() -> Response {
    views::bare_error(StatusCode::NOT_FOUND, "There is no such page.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_survive_a_shell() {
        assert_eq!(shell_word("cirros-0.6.2"), "cirros-0.6.2");
        assert_eq!(shell_word("it's mine"), "'it'\\''s mine'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn the_usage_line_reads_the_api_body() {
        let body = json!({"usage": {
            "image_size_total": {"limit": -1, "usage": 2048},
            "image_stage_total": {"limit": -1, "usage": 0},
            "image_count_total": {"limit": 100, "usage": 3},
            "image_count_uploading": {"limit": -1, "usage": 1},
        }});
        assert_eq!(
            usage_line(&body).unwrap(),
            "Your project's usage: images 3 of 100; storage 2.0 KiB of unlimited; uploads in progress 1 of unlimited."
        );
        assert!(usage_line(&json!({})).is_none());
    }

    #[test]
    fn notices_are_codes_not_text() {
        assert!(notice("saved").is_some());
        assert!(notice("<script>").is_none());
    }
}
