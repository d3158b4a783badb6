//! Evaluation data sets on disk: the MVTec AD layout and the Magnetic Tile layout with the
//! project's fixed split (`../shared/data/README.md`), the same rules as `scripts/common.py`.

use std::path::{Path, PathBuf};

use crate::capture::list_images;
use crate::error::{Error, Result};

/// How a data set is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// `train/good`, `test/<kind>`, `ground_truth/<kind>/<stem>_mask.png`.
    Mvtec,
    /// `MT_<Class>/Imgs/<stem>.jpg` with masks `<stem>.png` beside; `MT_Free` is the good class.
    MagneticTile,
}

impl Layout {
    /// The layout a folder has: Magnetic Tile when it holds `MT_Free`, else MVTec.
    pub fn detect(root: &Path) -> Layout {
        if root.join("MT_Free").is_dir() {
            Layout::MagneticTile
        } else {
            Layout::Mvtec
        }
    }
}

/// One image with its ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Image file.
    pub path: PathBuf,
    /// `good` or the defect type.
    pub kind: String,
    /// Pixel mask (white = defect), when the data set has one.
    pub mask: Option<PathBuf>,
}

impl Sample {
    /// Whether the part is defective.
    pub fn is_defect(&self) -> bool {
        self.kind != "good"
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(io(dir))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

fn name(p: &Path) -> String {
    p.file_name().and_then(|s| s.to_str()).unwrap_or("").to_string()
}

/// Images of one Magnetic Tile class, sorted by file name, with their masks.
fn mt_class(dir: &Path, kind: &str) -> Result<Vec<Sample>> {
    let imgs = dir.join("Imgs");
    Ok(sorted_entries(&imgs)?
        .into_iter()
        // Only the JPEGs: the PNGs beside them are the masks.
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")))
        .map(|p| {
            let mask = p.with_extension("png");
            Sample { mask: mask.is_file().then_some(mask), path: p, kind: kind.to_string() }
        })
        .collect())
}

/// The test images of a data set, good ones included.
pub fn test_split(root: &Path, layout: Layout) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    match layout {
        Layout::Mvtec => {
            let test = root.join("test");
            for dir in sorted_entries(&test)?.into_iter().filter(|p| p.is_dir()) {
                let kind = name(&dir);
                for p in list_images(&dir)? {
                    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                    let mask = root.join("ground_truth").join(&kind).join(format!("{stem}_mask.png"));
                    out.push(Sample { mask: mask.is_file().then_some(mask), path: p, kind: kind.clone() });
                }
            }
        }
        Layout::MagneticTile => {
            // The project's fixed split: MT_Free sorted by name, index % 4 == 0 is test.
            out.extend(mt_class(&root.join("MT_Free"), "good")?.into_iter().step_by(4));
            for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
                let n = name(&dir);
                if let Some(class) = n.strip_prefix("MT_").filter(|c| *c != "Free") {
                    out.extend(mt_class(&dir, &class.to_lowercase())?);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Image {
            path: root.to_path_buf(),
            why: format!("no test images found in {:?} layout (see docs/EVAL.md for the layouts)", layout),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn mvtec_layout_pairs_masks_by_stem() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in ["test/good/000.png", "test/crack/000.png", "test/crack/001.png", "ground_truth/crack/001_mask.png"] {
            touch(&r.join(f));
        }
        assert_eq!(Layout::detect(r), Layout::Mvtec);
        let s = test_split(r, Layout::Mvtec).unwrap();
        let kinds: Vec<_> = s.iter().map(|s| (s.kind.as_str(), s.mask.is_some())).collect();
        assert_eq!(kinds, vec![("crack", false), ("crack", true), ("good", false)]);
    }

    #[test]
    fn magnetic_tile_split_takes_every_fourth_free_image() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for i in 0..9 {
            touch(&r.join(format!("MT_Free/Imgs/f{i}.jpg")));
            touch(&r.join(format!("MT_Free/Imgs/f{i}.png")));
        }
        touch(&r.join("MT_Crack/Imgs/c0.jpg"));
        touch(&r.join("MT_Crack/Imgs/c0.png"));
        assert_eq!(Layout::detect(r), Layout::MagneticTile);
        let s = test_split(r, Layout::MagneticTile).unwrap();
        let names: Vec<_> = s.iter().map(|s| (name(&s.path), s.kind.as_str())).collect();
        assert_eq!(
            names,
            vec![
                ("f0.jpg".into(), "good"),
                ("f4.jpg".into(), "good"),
                ("f8.jpg".into(), "good"),
                ("c0.jpg".into(), "crack")
            ]
        );
        assert!(s[3].mask.is_some());
    }

    #[test]
    fn an_empty_folder_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("test")).unwrap();
        let e = test_split(d.path(), Layout::Mvtec).unwrap_err().to_string();
        assert!(e.contains("no test images"), "{e}");
    }
}
