//! `--write-docs`: the generated block of docs/benchmarks.md (between
//! `<!-- compare:begin -->` and `<!-- compare:end -->`, in the section
//! "Side by side: balancer, nginx, HAProxy", added at the end of the file
//! if missing) and the chart docs/img/compare.svg.

use std::path::Path;

use anyhow::{bail, Context};

pub const BEGIN: &str = "<!-- compare:begin -->";
pub const END: &str = "<!-- compare:end -->";
pub const SECTION: &str = "## Side by side: balancer, nginx, HAProxy";

/// `doc` with everything between the markers replaced by `block`, or with
/// the section and the markers appended.
pub fn splice(doc: &str, block: &str) -> anyhow::Result<String> {
    let block = block.trim_matches('\n');
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => Ok(format!(
            "{}{BEGIN}\n{block}\n{END}{}",
            &doc[..b],
            &doc[e + END.len()..]
        )),
        (None, None) => {
            let mut out = doc.trim_end_matches('\n').to_string();
            out.push_str(&format!("\n\n{SECTION}\n\n{BEGIN}\n{block}\n{END}\n"));
            Ok(out)
        }
        _ => bail!("the markers {BEGIN} and {END} are not both there, in that order"),
    }
}

/// Writes `docs_dir/benchmarks.md` and `docs_dir/img/compare.svg`.
pub fn write(docs_dir: &Path, block: &str, svg: &str) -> anyhow::Result<()> {
    let md = docs_dir.join("benchmarks.md");
    let doc =
        std::fs::read_to_string(&md).with_context(|| format!("cannot read {}", md.display()))?;
    let new = splice(&doc, block).with_context(|| md.display().to_string())?;
    std::fs::write(&md, new).with_context(|| format!("cannot write {}", md.display()))?;
    let img = docs_dir.join("img");
    std::fs::create_dir_all(&img)?;
    let chart = img.join("compare.svg");
    std::fs::write(&chart, svg).with_context(|| format!("cannot write {}", chart.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_the_section_once_then_replaces_between_markers() {
        let doc = "# Benchmarks\n\ntext\n";
        let one = splice(doc, "first\n").unwrap();
        assert_eq!(
            one,
            format!("# Benchmarks\n\ntext\n\n{SECTION}\n\n{BEGIN}\nfirst\n{END}\n")
        );
        let with_tail = format!("{one}\n## Later\n");
        let two = splice(&with_tail, "second").unwrap();
        assert!(two.contains(&format!("{BEGIN}\nsecond\n{END}\n\n## Later\n")));
        assert!(!two.contains("first"));
        assert_eq!(two.matches(SECTION).count(), 1);
    }

    #[test]
    fn refuses_half_markers() {
        assert!(splice(&format!("x {END} y {BEGIN}"), "b").is_err());
        assert!(splice(&format!("x {BEGIN}"), "b").is_err());
    }
}
