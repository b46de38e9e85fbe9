//! `socklab tune --report DIR`: DIR/index.html, one page that needs no network. Each
//! experiment gets a section: what it does, its tables as HTML tables, its paragraphs, its
//! charts (the SVG files beside the page, referenced relatively, so the directory can be
//! moved or served as it is) and what it suggests; a skipped or failed experiment says why.
//! The kernel settings are the `kernel` experiment's table.
//!
//! A small inline script marks, once the page has loaded, how many of its images loaded
//! (`data-images-loaded` / `data-images-total` on `<body>`) and flags a broken one in the
//! page itself; the tests read those marks from a headless browser.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{Block, Outcome, Section, Table};

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The directory could not be created or written to.
    #[error("cannot write the report into {}: {source}", path.display())]
    Unwritable {
        /// The directory or file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Creates `dir` if need be and checks that a file can be written in it (and removes it).
pub fn check_writable(dir: &Path) -> Result<(), ReportError> {
    let unwritable = |source| ReportError::Unwritable {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(unwritable)?;
    let probe = dir.join(".socklab-report-probe");
    std::fs::write(&probe, b"").map_err(unwritable)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes `dir/index.html` for `sections`; returns its path.
pub fn write(dir: &Path, sections: &[Section], quick: bool) -> Result<PathBuf, ReportError> {
    let page = dir.join("index.html");
    std::fs::write(&page, html(dir, sections, quick)).map_err(|source| {
        ReportError::Unwritable {
            path: page.clone(),
            source,
        }
    })?;
    Ok(page)
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's style: readable at any width, tables that scroll rather than overflow.
const STYLE: &str = "body{font-family:sans-serif;max-width:1060px;margin:1em auto;padding:0 1em;color:#222;line-height:1.4}\
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}\
.about{color:#555}.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.8em 0;font-size:.9em}\
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}th{background:#f3f3f3}\
td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;height:auto;border:1px solid #eee}\
.suggests{background:#f4f8ff;border-left:4px solid #1f77b4;padding:.5em 1em}\
.skipped{color:#8a6d00}.failed{color:#b00}.broken{color:#b00;font-weight:bold}nav a{margin-right:.8em}";

/// Marks how many images loaded, on `<body>`, and flags the broken ones in the page.
const SCRIPT: &str = "window.addEventListener('load',function(){var imgs=document.images,ok=0;\
for(var i=0;i<imgs.length;i++){var im=imgs[i];if(im.complete&&im.naturalWidth>0){ok++;}else{\
var p=document.createElement('p');p.className='broken';p.textContent='image did not load: '+im.getAttribute('src');\
im.parentNode.insertBefore(p,im.nextSibling);}}\
document.body.setAttribute('data-images-loaded',String(ok));\
document.body.setAttribute('data-images-total',String(imgs.length));});";

/// Whether a cell is a number (right-aligned).
fn numeric(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '-')
        && s.chars().all(|c| c.is_ascii_digit() || ".,-".contains(c))
}

/// A table as HTML.
fn table_html(t: &Table, out: &mut String) {
    out.push_str("<div class=\"scroll\"><table>\n<tr>");
    for h in t.headers() {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for r in t.rows() {
        out.push_str("<tr>");
        for c in r {
            let class = if numeric(c) { " class=\"num\"" } else { "" };
            let _ = write!(out, "<td{class}>{}</td>", escape(c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table></div>\n");
}

/// A chart's path relative to the page (its file name when it is in `dir`).
fn relative(dir: &Path, chart: &Path) -> String {
    match chart.strip_prefix(dir) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => chart.file_name().map_or_else(
            || chart.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        ),
    }
}

/// The whole page.
pub fn html(dir: &Path, sections: &[Section], quick: bool) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<title>socklab tune report</title>\n");
    let _ = writeln!(
        out,
        "<style>{STYLE}</style>\n<script>{SCRIPT}</script>\n</head>\n<body>"
    );
    out.push_str("<h1>socklab tune: what the socket options do here</h1>\n");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(
        out,
        "<p class=\"about\">Host {}, Linux {}; {} run{}. Every chart is an SVG file beside this page.</p>",
        escape(host.trim()),
        escape(kernel.trim()),
        if quick { "a quick (--quick)" } else { "a full" },
        if quick {
            ": small samples, read the shapes, not the decimals"
        } else {
            ""
        }
    );
    out.push_str("<nav>");
    for s in sections {
        let _ = write!(out, "<a href=\"#{0}\">{0}</a>", escape(s.name));
    }
    out.push_str("</nav>\n");
    for s in sections {
        let _ = writeln!(
            out,
            "<section id=\"{0}\">\n<h2>{0}</h2>\n<p class=\"about\">{1}</p>",
            escape(s.name),
            escape(s.about)
        );
        match &s.outcome {
            Outcome::Ran => {}
            Outcome::Skipped(why) => {
                let _ = writeln!(out, "<p class=\"skipped\">Skipped: {}</p>", escape(why));
            }
            Outcome::Failed(why) => {
                let _ = writeln!(out, "<p class=\"failed\">Failed: {}</p>", escape(why));
            }
        }
        for chart in &s.charts {
            let rel = relative(dir, chart);
            let _ = write!(
                out,
                "<p><img src=\"{0}\" alt=\"chart of the {1} experiment ({0})\" width=\"1000\" height=\"600\">",
                escape(&rel),
                escape(s.name)
            );
            let png = chart.with_extension("png");
            if s.pngs.contains(&png) {
                let _ = write!(
                    out,
                    "<br><a href=\"{0}\">PNG</a>",
                    escape(&relative(dir, &png))
                );
            }
            out.push_str("</p>\n");
        }
        if !s.suggests.is_empty() {
            out.push_str("<div class=\"suggests\"><strong>What this suggests</strong><ul>\n");
            for t in &s.suggests {
                let _ = writeln!(out, "<li>{}</li>", escape(t));
            }
            out.push_str("</ul></div>\n");
        }
        for b in &s.blocks {
            match b {
                Block::Table(t) => table_html(t, &mut out),
                Block::Text(t) if t.trim().is_empty() => {}
                Block::Text(t) => {
                    let _ = writeln!(out, "<p>{}</p>", escape(t));
                }
            }
        }
        out.push_str("</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tune::EXPERIMENTS;

    #[test]
    fn the_page_holds_tables_charts_suggestions_and_why_a_section_is_missing() {
        let mut ran = Section::new(&EXPERIMENTS[0]);
        let mut t = Table::new(&["setting", "p99 µs"]);
        t.row(vec!["<on>".into(), "42".into()]);
        ran.blocks.push(Block::Table(t));
        ran.blocks.push(Block::Text("a & b".into()));
        ran.charts.push(PathBuf::from("/r/nodelay.svg"));
        ran.suggests.push("turn TCP_NODELAY on".into());
        let mut skipped = Section::new(&EXPERIMENTS[1]);
        skipped.outcome = Outcome::Skipped("needs root".into());
        let page = html(Path::new("/r"), &[ran, skipped], true);
        for want in [
            "<img src=\"nodelay.svg\"",
            "<th>p99 µs</th>",
            "<td>&lt;on&gt;</td>",
            "<td class=\"num\">42</td>",
            "<p>a &amp; b</p>",
            "<li>turn TCP_NODELAY on</li>",
            "Skipped: needs root",
            "data-images-loaded",
        ] {
            assert!(page.contains(want), "{want} missing from\n{page}");
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
        // No PNG was made: no link to one.
        assert!(!page.contains(">PNG</a>"));
    }

    #[test]
    fn a_chart_with_a_png_copy_links_to_it() {
        let mut ran = Section::new(&EXPERIMENTS[0]);
        ran.charts.push(PathBuf::from("/r/nodelay.svg"));
        ran.pngs.push(PathBuf::from("/r/nodelay.png"));
        let page = html(Path::new("/r"), &[ran], true);
        assert!(
            page.contains("<br><a href=\"nodelay.png\">PNG</a></p>"),
            "{page}"
        );
    }

    #[test]
    fn an_unwritable_directory_is_named_in_the_error() {
        let e = check_writable(Path::new("/proc/socklab-no-such/report")).unwrap_err();
        assert!(
            e.to_string().contains("/proc/socklab-no-such/report"),
            "{e}"
        );
    }
}
