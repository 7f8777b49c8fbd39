//! Images: what VMs boot from and base their disks on.

use crate::row::{binds, insert_on, Cols, FromRow, Record, Value};
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

/// A host's copy of an image: `copying` while it is made, then `ready` with its files'
/// paths there.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageCopyRecord {
    pub image_id: String,
    pub host_id: String,
    pub state: String,
    pub path: Option<String>,
    pub initrd: Option<String>,
    pub updated_at: Timestamp,
}

impl ImageCopyRecord {
    pub fn is_ready(&self) -> bool {
        self.state == "ready"
    }
}

impl FromRow for ImageCopyRecord {
    const TABLE: &'static str = "image_copies";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(ImageCopyRecord {
            image_id: c.text("image_id")?,
            host_id: c.text("host_id")?,
            state: c.text("state")?,
            path: c.opt_text("path")?,
            initrd: c.opt_text("initrd")?,
            updated_at: c.time("updated_at")?,
        })
    }
}

impl Record for ImageCopyRecord {
    const COLS: &'static str = "image_id, host_id, state, path, initrd, updated_at";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.image_id,
            &self.host_id,
            &self.state,
            &self.path,
            &self.initrd,
            self.updated_at,
        ]
    }
}

impl Store {
    /// Records an image and the first copy of it, on the host that made it, at once.
    pub async fn insert_image(&self, i: &ImageRecord) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        insert_on(&mut tx, i).await?;
        let copy = ImageCopyRecord {
            image_id: i.id.clone(),
            host_id: i.host_id.clone(),
            state: "ready".into(),
            path: Some(i.path.clone()),
            initrd: i.initrd.clone(),
            updated_at: i.created_at,
        };
        insert_on(&mut tx, &copy).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every host's copy of an image (ready or under way).
    pub async fn image_copies(&self, image_id: &str) -> Result<Vec<ImageCopyRecord>> {
        let sql = format!(
            "SELECT {} FROM image_copies WHERE image_id = $1 ORDER BY host_id",
            ImageCopyRecord::COLS
        );
        self.fetch_all(&sql, binds![image_id]).await
    }

    pub async fn image_copy(
        &self,
        image_id: &str,
        host_id: &str,
    ) -> Result<Option<ImageCopyRecord>> {
        let sql = format!(
            "SELECT {} FROM image_copies WHERE image_id = $1 AND host_id = $2",
            ImageCopyRecord::COLS
        );
        self.fetch_optional(&sql, binds![image_id, host_id]).await
    }

    /// Marks a copy under way (a row left `copying` by an interrupted copy is taken over);
    /// false when the host has a ready copy already.
    pub async fn begin_image_copy(&self, image_id: &str, host_id: &str) -> Result<bool> {
        let at = crate::now();
        let changed = self
            .execute(
                "UPDATE image_copies SET state = 'copying', updated_at = $3 \
                 WHERE image_id = $1 AND host_id = $2 AND state <> 'ready'",
                binds![image_id, host_id, at],
            )
            .await?;
        if changed > 0 {
            return Ok(true);
        }
        if self.image_copy(image_id, host_id).await?.is_some() {
            return Ok(false);
        }
        self.insert(&ImageCopyRecord {
            image_id: image_id.into(),
            host_id: host_id.into(),
            state: "copying".into(),
            path: None,
            initrd: None,
            updated_at: at,
        })
        .await?;
        Ok(true)
    }

    /// A copy made: it is ready at these paths.
    pub async fn finish_image_copy(
        &self,
        image_id: &str,
        host_id: &str,
        path: &str,
        initrd: Option<&str>,
    ) -> Result<()> {
        let n = self
            .execute(
                "UPDATE image_copies SET state = 'ready', path = $3, initrd = $4, updated_at = $5 \
                 WHERE image_id = $1 AND host_id = $2",
                binds![image_id, host_id, path, initrd, crate::now()],
            )
            .await?;
        if n == 0 {
            anyhow::bail!("the image was deleted while it was copied");
        }
        Ok(())
    }

    /// Forgets a host's copy (a failed copy's row, or a copy whose files went).
    pub async fn drop_image_copy(&self, image_id: &str, host_id: &str) -> Result<()> {
        self.execute(
            "DELETE FROM image_copies WHERE image_id = $1 AND host_id = $2",
            binds![image_id, host_id],
        )
        .await?;
        Ok(())
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
        self.delete_if_unused(
            "images",
            IMAGE_USERS,
            &["DELETE FROM image_copies WHERE image_id = $1"],
            image_id,
        )
        .await
    }
}
