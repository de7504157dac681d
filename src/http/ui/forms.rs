//! The UI's forms: reading them, and turning them into what the API handlers take (the JSON
//! fields of an image create, the operations of a JSON patch).

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::views;
use crate::kv::ImageRecord;

/// A submitted `application/x-www-form-urlencoded` form, in order.
pub struct Form(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Form, Response> {
        let bytes = super::super::read_small_body(request, state)
            .await
            .map_err(|error| views::bare_error(error.status, &error.message).into_response())?;
        Ok(Form(form_urlencoded::parse(&bytes).into_owned().collect()))
    }
}

impl Form {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The trimmed value of `name`, `None` when missing or blank.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name)
            .map(str::trim)
            .filter(|value| !value.is_empty())
    }

    /// A checkbox: present means checked.
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// The fields a create form may set, as the image record names them.
pub const TEXT_PROPERTIES: [&str; 4] = ["description", "architecture", "os_distro", "os_version"];

/// The extra properties of a textarea: one `key=value` per line; blank lines are skipped.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut properties = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "Custom properties, line {}: write key=value",
                number + 1
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!(
                "Custom properties, line {}: the key is empty",
                number + 1
            ));
        }
        properties.push((key.to_owned(), value.trim().to_owned()));
    }
    Ok(properties)
}

/// The tags of a comma-separated field.
pub fn parse_tags(text: &str) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for tag in text.split(',').map(str::trim).filter(|tag| !tag.is_empty()) {
        if !tags.iter().any(|known| known == tag) {
            tags.push(tag.to_owned());
        }
    }
    tags
}

/// A number field: blank is `default`; anything else must be a whole number (the API then
/// says whether it may be negative).
fn number(form: &Form, name: &str, label: &str) -> Result<Option<Value>, String> {
    match form.text(name) {
        None => Ok(None),
        Some(text) => text
            .parse::<i64>()
            .map(|number| Some(Value::from(number)))
            .map_err(|_| format!("{label} must be a whole number")),
    }
}

/// The JSON fields of `POST /v2/images` the create form stands for.
pub fn create_fields(form: &Form) -> Result<Map<String, Value>, String> {
    let mut fields = Map::new();
    if let Some(name) = form.text("name") {
        fields.insert("name".into(), name.into());
    }
    for key in ["disk_format", "container_format", "visibility"] {
        if let Some(value) = form.text(key) {
            fields.insert(key.into(), value.into());
        }
    }
    for (key, label) in [("min_disk", "Minimum disk"), ("min_ram", "Minimum RAM")] {
        if let Some(value) = number(form, key, label)? {
            fields.insert(key.into(), value);
        }
    }
    fields.insert("protected".into(), form.checked("protected").into());
    if let Some(tags) = form.text("tags") {
        fields.insert("tags".into(), parse_tags(tags).into());
    }
    for key in TEXT_PROPERTIES.iter().chain(&["kernel_id", "ramdisk_id"]) {
        if let Some(value) = form.text(key) {
            fields.insert((*key).into(), value.into());
        }
    }
    for (key, value) in parse_properties(form.get("properties").unwrap_or_default())? {
        if fields.contains_key(&key) {
            return Err(format!(
                "Custom property {key} repeats a field of the form or another line"
            ));
        }
        fields.insert(key, value.into());
    }
    Ok(fields)
}

/// Whether a key is a custom property the edit form may change (not core, not computed, not
/// reserved): the ones the API would refuse are shown read-only.
pub fn editable_property(key: &str) -> bool {
    !super::super::wire::is_core(key) && super::super::wire::check_writable(key).is_ok()
}

/// One PATCH (RFC 6902 dialect) that turns `record` into what the edit form says. Only what
/// changed is in it; an unchanged form is an empty patch.
pub fn edit_operations(
    record: &ImageRecord,
    form: &Form,
) -> Result<Vec<super::super::images::PatchOperation>, String> {
    use super::super::images::PatchOperation;
    let mut operations = Vec::new();
    let mut replace = |path: &str, value: Value| {
        operations.push(PatchOperation {
            op: "replace".into(),
            path: path.into(),
            value: Some(value),
        });
    };
    let name = form.text("name").map(str::to_owned);
    if name != record.name {
        replace("name", name.map_or(Value::Null, Value::from));
    }
    for (key, current) in [
        ("disk_format", &record.disk_format),
        ("container_format", &record.container_format),
    ] {
        let wanted = form.text(key).map(str::to_owned);
        if wanted != *current {
            replace(key, wanted.map_or(Value::Null, Value::from));
        }
    }
    if let Some(visibility) = form.text("visibility")
        && visibility != record.visibility.as_str()
    {
        replace("visibility", visibility.into());
    }
    for (key, label, current) in [
        ("min_disk", "Minimum disk", record.min_disk),
        ("min_ram", "Minimum RAM", record.min_ram),
    ] {
        let wanted = number(form, key, label)?.unwrap_or(Value::from(0));
        if wanted != current {
            replace(key, wanted);
        }
    }
    for (key, current) in [
        ("protected", record.protected),
        ("os_hidden", record.os_hidden),
    ] {
        if form.checked(key) != current {
            replace(key, form.checked(key).into());
        }
    }
    let wanted = parse_properties(form.get("properties").unwrap_or_default())?;
    for (key, _) in &wanted {
        if wanted.iter().filter(|(other, _)| other == key).count() > 1 {
            return Err(format!("Custom property {key} is given twice"));
        }
    }
    for (key, value) in &record.properties {
        if !editable_property(key) {
            continue;
        }
        match wanted.iter().find(|(wanted_key, _)| wanted_key == key) {
            None => operations.push(PatchOperation {
                op: "remove".into(),
                path: key.clone(),
                value: None,
            }),
            Some((_, wanted_value)) if wanted_value != value => operations.push(PatchOperation {
                op: "replace".into(),
                path: key.clone(),
                value: Some(wanted_value.clone().into()),
            }),
            Some(_) => {}
        }
    }
    for (key, value) in wanted {
        if !record.properties.contains_key(&key) {
            operations.push(PatchOperation {
                op: "add".into(),
                path: key,
                value: Some(value.into()),
            });
        }
    }
    Ok(operations)
}

/// A form's error as the API would word a bad request.
pub fn invalid(message: String) -> super::super::Error {
    super::super::Error::new(StatusCode::BAD_REQUEST, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(
            pairs
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        )
    }

    #[test]
    fn properties_are_key_value_lines() {
        assert_eq!(
            parse_properties("a=1\n\n b = two=2 \n").unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "two=2".into())]
        );
        assert!(parse_properties("novalue").unwrap_err().contains("line 1"));
        assert!(parse_properties("=x").unwrap_err().contains("empty"));
    }

    #[test]
    fn a_create_form_becomes_the_api_fields() {
        let fields = create_fields(&form(&[
            ("name", " cirros "),
            ("disk_format", "qcow2"),
            ("container_format", "bare"),
            ("min_disk", "2"),
            ("min_ram", ""),
            ("tags", "a, b,a"),
            ("os_distro", "cirros"),
            ("properties", "hw_disk_bus=virtio"),
            ("protected", "true"),
        ]))
        .unwrap();
        assert_eq!(
            Value::Object(fields),
            serde_json::json!({
                "name": "cirros", "disk_format": "qcow2", "container_format": "bare",
                "min_disk": 2, "protected": true, "tags": ["a", "b"], "os_distro": "cirros",
                "hw_disk_bus": "virtio"
            })
        );
        assert!(create_fields(&form(&[("min_ram", "lots")])).is_err());
        assert!(
            create_fields(&form(&[("os_distro", "a"), ("properties", "os_distro=b")])).is_err()
        );
    }
}
