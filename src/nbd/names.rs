//! Export names: `<image id>`, `<image id>:raw` for the guest-visible disk of a qcow2 image,
//! either followed by `@<capability>` (with keys). Pure, so that the HTTP side can build
//! names without depending on the server.

use crate::kv::ImageId;

/// An export name taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct Name<'a> {
    pub image: &'a str,
    pub raw: bool,
    pub capability: Option<&'a str>,
}

pub fn parse_name(name: &str) -> Name<'_> {
    let (export, capability) = match name.split_once('@') {
        Some((export, capability)) => (export, Some(capability)),
        None => (name, None),
    };
    match export.strip_suffix(":raw") {
        Some(image) => Name {
            image,
            raw: true,
            capability,
        },
        None => Name {
            image: export,
            raw: false,
            capability,
        },
    }
}

/// The export name a client uses for `image` (and its raw view), with a capability if given.
pub fn export_name(image: ImageId, raw: bool, capability: Option<&str>) -> String {
    let mut name = image.to_string();
    if raw {
        name.push_str(":raw");
    }
    if let Some(capability) = capability {
        name.push('@');
        name.push_str(capability);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_apart_into_image_view_and_capability() {
        let id = "0b2f5a34-5a4e-4f7e-9d55-1b8d2b1a6f10";
        assert_eq!(
            parse_name(id),
            Name {
                image: id,
                raw: false,
                capability: None
            }
        );
        assert_eq!(
            parse_name(&format!("{id}:raw@abc")),
            Name {
                image: id,
                raw: true,
                capability: Some("abc")
            }
        );
        let image = ImageId::parse(id).unwrap();
        assert_eq!(
            parse_name(&export_name(image, true, Some("t"))),
            Name {
                image: id,
                raw: true,
                capability: Some("t")
            }
        );
        assert_eq!(parse_name("").image, "");
    }
}
