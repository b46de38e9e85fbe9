//! PNG copies of the SVG charts (`socklab tune --png`), for readers whose tools take no SVG
//! (slides, chat, issue trackers). The SVG stays the source: each PNG is that file rendered by
//! resvg, so the two never disagree. Text needs a font; the system's fonts are loaded once,
//! and `sans-serif` (what the charts ask for) is mapped to a sans face found among them.

use std::path::{Path, PathBuf};

use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg::{Options, Tree};

/// Why a PNG could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// No font at all: the charts' text would be missing.
    #[error(
        "--png needs a TrueType or OpenType font and none was found in the system's font directories (on Debian: apt install fonts-dejavu-core)"
    )]
    NoFont,
    /// The SVG could not be read or parsed.
    #[error("cannot read {path}: {message}")]
    Svg {
        /// The chart.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The PNG could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The PNG.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Renders SVG charts to PNG with one set of fonts.
pub struct Rasterizer {
    /// The parser's options, holding the font database.
    options: Options<'static>,
}

impl std::fmt::Debug for Rasterizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rasterizer")
            .field("fonts", &self.options.fontdb.len())
            .finish()
    }
}

impl Rasterizer {
    /// Loads the system's fonts; fails when there is none.
    pub fn new() -> Result<Rasterizer, PngError> {
        let mut options = Options::default();
        let db = options.fontdb_mut();
        db.load_system_fonts();
        let sans = sans_family(db).ok_or(PngError::NoFont)?;
        db.set_sans_serif_family(sans);
        Ok(Rasterizer { options })
    }

    /// Writes `svg`'s PNG beside it (`x.svg` → `x.png`); returns its path.
    pub fn render(&self, svg: &Path) -> Result<PathBuf, PngError> {
        let bad_svg = |message: String| PngError::Svg {
            path: svg.to_path_buf(),
            message,
        };
        let data = std::fs::read(svg).map_err(|e| bad_svg(e.to_string()))?;
        let tree = Tree::from_data(&data, &self.options).map_err(|e| bad_svg(e.to_string()))?;
        let size = tree.size().to_int_size();
        let mut pixmap = Pixmap::new(size.width(), size.height())
            .ok_or_else(|| bad_svg(format!("an empty size, {size:?}")))?;
        resvg::render(&tree, Transform::default(), &mut pixmap.as_mut());
        let png = svg.with_extension("png");
        pixmap.save_png(&png).map_err(|e| PngError::Write {
            path: png.clone(),
            message: e.to_string(),
        })?;
        Ok(png)
    }
}

/// The family to draw `sans-serif` with: a well-known sans face when there is one, else any
/// sans face, else the first face of all (text in a serif beats no text).
fn sans_family(db: &resvg::usvg::fontdb::Database) -> Option<String> {
    let families: Vec<String> = db
        .faces()
        .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
        .collect();
    const PREFERRED: [&str; 5] = [
        "DejaVu Sans",
        "Liberation Sans",
        "Noto Sans",
        "Arial",
        "Helvetica",
    ];
    PREFERRED
        .iter()
        .find(|p| families.iter().any(|f| f == *p))
        .map(|p| (*p).to_owned())
        .or_else(|| {
            families
                .iter()
                .find(|f| f.contains("Sans") && !f.contains("Mono"))
                .cloned()
        })
        .or_else(|| families.first().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_becomes_a_png_of_its_size_with_its_text_drawn() {
        // `.ci/run` installs fonts-dejavu-core.
        let r = Rasterizer::new().unwrap();
        let dir = std::env::temp_dir().join(format!("socklab-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let with_text = dir.join("t.svg");
        let without = dir.join("n.svg");
        let svg = |text: &str| {
            format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"300\" height=\"100\">\
                 <rect width=\"300\" height=\"100\" fill=\"#FFFFFF\"/>\
                 <text x=\"10\" y=\"60\" font-family=\"sans-serif\" font-size=\"40\">{text}</text></svg>"
            )
        };
        std::fs::write(&with_text, svg("backlog 128")).unwrap();
        std::fs::write(&without, svg("")).unwrap();
        let png = r.render(&with_text).unwrap();
        assert_eq!(png, dir.join("t.png"));
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, at bytes 16..24.
        assert_eq!(&bytes[16..24], &[0, 0, 1, 44, 0, 0, 0, 100]);
        // The text is drawn: its pixels make the image differ from a blank one.
        let drawn = Pixmap::load_png(&png).unwrap();
        let blank = Pixmap::load_png(r.render(&without).unwrap()).unwrap();
        let dark = |p: &Pixmap| p.pixels().iter().filter(|c| c.red() < 128).count();
        assert_eq!(dark(&blank), 0);
        assert!(
            dark(&drawn) > 200,
            "text not drawn: {} dark pixels",
            dark(&drawn)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_svg_is_named() {
        let r = Rasterizer::new().unwrap();
        let e = r.render(Path::new("/nonexistent/x.svg")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/x.svg: "),
            "{e}"
        );
    }
}
