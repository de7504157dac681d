//! Who may do what to an image: the access rules, kept apart from HTTP and storage.
//!
//! This is the subset of Glance's default policy that the lab mode needs: admins may do
//! anything; others see public and community images and their own project's images, and
//! change only their own. Image members and API keys refine these rules in a later change.

use crate::kv::{ImageRecord, Visibility};

/// The authenticated (or, in lab mode, asserted) identity behind a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub project_id: String,
    pub user_id: Option<String>,
    pub roles: Vec<String>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|role| role == "admin")
    }

    fn owns(&self, image: &ImageRecord) -> bool {
        image.owner.as_deref() == Some(self.project_id.as_str())
    }

    /// Whether the image exists as far as this caller is concerned; if not, answer 404.
    pub fn can_see(&self, image: &ImageRecord) -> bool {
        self.is_admin()
            || self.owns(image)
            || matches!(image.visibility, Visibility::Public | Visibility::Community)
    }

    /// Whether the caller may change the image's metadata or data.
    pub fn can_modify(&self, image: &ImageRecord) -> bool {
        self.is_admin() || self.owns(image)
    }

    /// Whether an image shows up in a listing that names no visibility filter: community
    /// images only for their owner, as Glance does.
    pub fn lists_by_default(&self, image: &ImageRecord) -> bool {
        match image.visibility {
            Visibility::Public => true,
            Visibility::Community => self.owns(image),
            Visibility::Shared | Visibility::Private => self.is_admin() || self.owns(image),
        }
    }

    /// Whether the caller may download a deactivated image.
    pub fn can_download_deactivated(&self) -> bool {
        self.is_admin()
    }

    /// Whether the caller may deactivate or reactivate images.
    pub fn can_deactivate(&self) -> bool {
        self.is_admin()
    }
}
