//! Images: what VMs boot from and base their disks on.

use crate::row::{binds, Cols, FromRow, Record, Value};
use crate::{Store, Timestamp};
use anyhow::Result;
use hostel_model::ImageKind;

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub id: String,
    pub name: String,
    pub kind: ImageKind,
    pub format: String,
    pub path: String,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub size_bytes: u64,
    pub virtual_size_mib: u64,
    pub sha256: String,
    pub host_id: String,
    pub created_at: Timestamp,
}

impl FromRow for ImageRecord {
    const TABLE: &'static str = "images";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(ImageRecord {
            id: c.text("id")?,
            name: c.text("name")?,
            kind: c.enumed("kind")?,
            format: c.text("format")?,
            path: c.text("path")?,
            initrd: c.opt_text("initrd")?,
            cmdline: c.opt_text("cmdline")?,
            size_bytes: c.int("size_bytes")?,
            virtual_size_mib: c.int("virtual_size_mib")?,
            sha256: c.text("sha256")?,
            host_id: c.text("host_id")?,
            created_at: c.time("created_at")?,
        })
    }
}

impl Record for ImageRecord {
    const COLS: &'static str = "id, name, kind, format, path, initrd, cmdline, size_bytes, \
        virtual_size_mib, sha256, host_id, created_at";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.name,
            self.kind,
            &self.format,
            &self.path,
            &self.initrd,
            &self.cmdline,
            self.size_bytes,
            self.virtual_size_mib,
            &self.sha256,
            &self.host_id,
            self.created_at,
        ]
    }
}

/// The VMs that use an image: booting from it, with it as CD-ROM, or with a disk on it.
const IMAGE_USERS: &str = "SELECT name FROM vms WHERE image_id = $1 OR cdrom_image_id = $1 \
     UNION SELECT v.name FROM vms v JOIN disks d ON d.vm_id = v.id WHERE d.image_id = $1 \
     ORDER BY name";

impl Store {
    pub async fn insert_image(&self, i: &ImageRecord) -> Result<()> {
        self.insert(i).await
    }

    pub async fn image_by_name(&self, name: &str) -> Result<Option<ImageRecord>> {
        let sql = format!("SELECT {} FROM images WHERE name = $1", ImageRecord::COLS);
        self.fetch_optional(&sql, binds![name]).await
    }

    pub async fn image_by_id(&self, id: &str) -> Result<Option<ImageRecord>> {
        let sql = format!("SELECT {} FROM images WHERE id = $1", ImageRecord::COLS);
        self.fetch_optional(&sql, binds![id]).await
    }

    pub async fn images(&self) -> Result<Vec<ImageRecord>> {
        let sql = format!("SELECT {} FROM images ORDER BY name", ImageRecord::COLS);
        self.fetch_all(&sql, binds![]).await
    }

    /// Names of the VMs that use an image (booting from it or with a disk based on it).
    pub async fn image_users(&self, image_id: &str) -> Result<Vec<String>> {
        self.fetch_all(IMAGE_USERS, binds![image_id]).await
    }

    /// Deletes the image row only if no VM uses it; returns the users otherwise.
    pub async fn delete_image_if_unused(&self, image_id: &str) -> Result<Vec<String>> {
        self.delete_if_unused("images", IMAGE_USERS, &[], image_id)
            .await
    }
}
