//! Who may do what to an image: Glance's default (secure RBAC) policy, kept apart from HTTP
//! and storage.
//!
//! Roles are project-scoped: `reader` reads, `member` also writes, `admin` may do anything
//! anywhere. Each rule below names the Glance policy it follows. Visibility (`can_see`) decides
//! between 404 and the rest: an image the caller cannot see does not exist for them, and a 403
//! is only ever given for a visible image.

use std::collections::HashMap;

use crate::kv::{ImageId, ImageRecord, MemberStatus, Visibility};

/// The authenticated (or, in lab mode, asserted) identity behind a request.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub project_id: String,
    pub user_id: Option<String>,
    /// Effective roles, implied ones included (admin ⇒ member ⇒ reader for API keys).
    pub roles: Vec<String>,
    /// The caller's project's status on every image shared with it.
    pub memberships: HashMap<ImageId, MemberStatus>,
}

/// Which images a listing asks for by visibility.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisibilityFilter {
    /// No `visibility` parameter: Glance's default listing.
    Default,
    Only(Visibility),
    All,
}

/// The `member_status` parameter of a listing (default `accepted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberStatusFilter {
    Only(MemberStatus),
    All,
}

impl MemberStatusFilter {
    pub fn admits(self, status: MemberStatus) -> bool {
        match self {
            MemberStatusFilter::All => true,
            MemberStatusFilter::Only(wanted) => wanted == status,
        }
    }
}

/// The `is_public` parameter of a v1 listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicFilter {
    /// Absent or `true`: as Glance v1, public images plus the caller's own and those shared
    /// with it (unless it rejected the share).
    Default,
    /// `false`: the images that are not public, of those the caller may list.
    NotPublic,
    /// `none`: every image the caller may list.
    Any,
}

impl Caller {
    fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|held| held == role)
    }

    /// `context_is_admin`: the admin role, in any project.
    pub fn is_admin(&self) -> bool {
        self.has_role("admin")
    }

    /// Whether the caller may read at all (`role:reader` in `get_image(s)`).
    pub fn can_read(&self) -> bool {
        self.is_admin() || self.has_role("reader")
    }

    fn is_member(&self) -> bool {
        self.is_admin() || self.has_role("member")
    }

    fn owns(&self, image: &ImageRecord) -> bool {
        image.owner.as_deref() == Some(self.project_id.as_str())
    }

    /// The caller's membership of a shared image they do not own.
    pub fn membership(&self, image: &ImageRecord) -> Option<MemberStatus> {
        if image.visibility == Visibility::Shared {
            self.memberships.get(&image.id).copied()
        } else {
            None
        }
    }

    /// Whether the image exists as far as this caller is concerned (Glance's
    /// `is_image_visible` combined with the `get_image` rule): admins see all; everyone sees
    /// public and community images, and shared images without an owner; a project sees its
    /// own images and shared images it is a member of, whatever its member status.
    pub fn can_see(&self, image: &ImageRecord) -> bool {
        self.is_admin()
            || (image.owner.is_none() && image.visibility == Visibility::Shared)
            || self.owns(image)
            || matches!(image.visibility, Visibility::Public | Visibility::Community)
            || self.membership(image).is_some()
    }

    /// `modify_image`, `delete_image`, `upload_image`, tags, `deactivate`, `reactivate`,
    /// `add_member`, `delete_member`: admin, or a member of the owning project.
    pub fn can_modify(&self, image: &ImageRecord) -> bool {
        self.is_admin() || (self.has_role("member") && self.owns(image))
    }

    /// `download_image`: admin, or the member role on any image the caller can see.
    pub fn can_download(&self) -> bool {
        self.is_member()
    }

    /// `add_image`: admin, or a member creating an image its own project owns.
    pub fn can_create(&self, owner: Option<&str>) -> bool {
        self.is_admin() || (self.has_role("member") && owner == Some(self.project_id.as_str()))
    }

    /// `publicize_image`: admin only.
    pub fn can_publicize(&self) -> bool {
        self.is_admin()
    }

    /// Downloading a deactivated image: admin only.
    pub fn can_download_deactivated(&self) -> bool {
        self.is_admin()
    }

    /// `get_member(s)`: admin, or a reader of the owning project or of the member project.
    pub fn can_read_members(&self, image: &ImageRecord) -> bool {
        self.is_admin()
            || (self.has_role("reader") && (self.owns(image) || self.membership(image).is_some()))
    }

    /// Which members of an image the caller sees: all for admins and the owner, else only
    /// their own membership.
    pub fn sees_every_member(&self, image: &ImageRecord) -> bool {
        self.is_admin() || self.owns(image)
    }

    /// `modify_member`: admin, or a member of the member project itself.
    pub fn can_set_member_status(&self, member: &str) -> bool {
        self.is_admin() || (self.has_role("member") && member == self.project_id)
    }

    /// Whether an image belongs in a v1 listing with this `is_public` parameter.
    pub fn lists_v1(&self, image: &ImageRecord, public: PublicFilter) -> bool {
        let any = MemberStatusFilter::All;
        match public {
            PublicFilter::Default => {
                image.visibility == Visibility::Public
                    || self.owns(image)
                    || matches!(
                        self.membership(image),
                        Some(MemberStatus::Pending | MemberStatus::Accepted)
                    )
            }
            PublicFilter::NotPublic => {
                image.visibility != Visibility::Public
                    && self.lists(image, VisibilityFilter::All, any)
            }
            PublicFilter::Any => self.lists(image, VisibilityFilter::All, any),
        }
    }

    /// Whether a metadata definition namespace exists for the caller: Glance's database
    /// visibility combined with `get_metadef_namespace` (and the other metadef read rules):
    /// admins see all; readers see public namespaces and their own project's.
    pub fn can_see_namespace(&self, owner: Option<&str>, public: bool) -> bool {
        self.is_admin()
            || (self.has_role("reader") && (public || owner == Some(self.project_id.as_str())))
    }

    /// `metadef_admin`, the rule of every metadef change (`add_`, `modify_`, `delete_`,
    /// `remove_metadef_*`): admin only.
    pub fn can_manage_metadefs(&self) -> bool {
        self.is_admin()
    }

    /// Whether an image belongs in a listing with these `visibility` and `member_status`
    /// parameters. Community images are listed only on request (or to their owner); shared
    /// images of other projects only if the caller's membership status matches.
    pub fn lists(
        &self,
        image: &ImageRecord,
        visibility: VisibilityFilter,
        member_status: MemberStatusFilter,
    ) -> bool {
        if let VisibilityFilter::Only(wanted) = visibility
            && image.visibility != wanted
        {
            return false;
        }
        if self.owns(image) {
            return true;
        }
        match image.visibility {
            Visibility::Public => true,
            Visibility::Community => visibility != VisibilityFilter::Default,
            Visibility::Shared | Visibility::Private if self.is_admin() => true,
            Visibility::Shared => self
                .membership(image)
                .is_some_and(|status| member_status.admits(status)),
            Visibility::Private => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::ImageStatus;

    fn image(owner: &str, visibility: Visibility) -> ImageRecord {
        ImageRecord {
            status: ImageStatus::Active,
            visibility,
            ..ImageRecord::new(ImageId([1; 16]), Some(owner.into()), 0)
        }
    }

    fn caller(project: &str, roles: &[&str]) -> Caller {
        Caller {
            project_id: project.into(),
            roles: roles.iter().map(|role| role.to_string()).collect(),
            ..Caller::default()
        }
    }

    #[test]
    fn shared_images_follow_membership() {
        let shared = image("alpha", Visibility::Shared);
        let mut beta = caller("beta", &["member", "reader"]);
        assert!(!beta.can_see(&shared));
        beta.memberships.insert(shared.id, MemberStatus::Pending);
        assert!(beta.can_see(&shared));
        let default = MemberStatusFilter::Only(MemberStatus::Accepted);
        assert!(!beta.lists(&shared, VisibilityFilter::Default, default));
        assert!(beta.lists(&shared, VisibilityFilter::Default, MemberStatusFilter::All));
        assert!(!beta.can_modify(&shared));
        assert!(beta.can_read_members(&shared));
        assert!(!beta.sees_every_member(&shared));
        // Once the image is private again, the membership no longer grants anything.
        let private = image("alpha", Visibility::Private);
        assert!(!beta.can_see(&private));
    }

    #[test]
    fn readers_read_and_members_write() {
        let own = image("alpha", Visibility::Private);
        let reader = caller("alpha", &["reader"]);
        assert!(reader.can_see(&own) && reader.can_read());
        assert!(!reader.can_modify(&own) && !reader.can_download());
        assert!(!reader.can_create(Some("alpha")));
        let member = caller("alpha", &["member", "reader"]);
        assert!(member.can_modify(&own) && member.can_download());
        assert!(member.can_create(Some("alpha")) && !member.can_create(Some("beta")));
        assert!(!member.can_publicize());
        let admin = caller("gamma", &["admin", "member", "reader"]);
        assert!(admin.can_modify(&own) && admin.can_publicize());
    }

    #[test]
    fn community_images_are_listed_on_request() {
        let community = image("alpha", Visibility::Community);
        let beta = caller("beta", &["reader"]);
        let accepted = MemberStatusFilter::Only(MemberStatus::Accepted);
        assert!(beta.can_see(&community));
        assert!(!beta.lists(&community, VisibilityFilter::Default, accepted));
        assert!(beta.lists(
            &community,
            VisibilityFilter::Only(Visibility::Community),
            accepted
        ));
        assert!(caller("alpha", &["reader"]).lists(
            &community,
            VisibilityFilter::Default,
            accepted
        ));
    }
}
