//! WikiText as lm-eval's `wikitext` task reads it: the raw file split into articles (the
//! document-level version of the data set), each article detokenized before scoring, and words
//! and bytes counted on the article as written in the file.

use regex::Regex;
use std::sync::OnceLock;

/// Splits a `wiki.*.raw` file into articles: a new article starts at each top-level heading
/// line " = Title = " (sub-headings "= = ... = =" are not counted as top level).
pub fn documents(raw: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut lines: Vec<&str> = Vec::new();
    for line in raw.split('\n') {
        let squeezed = line.replace("= = =", "===").replace("= =", "==");
        let squeezed = squeezed.trim();
        if squeezed.starts_with("= ") && squeezed.ends_with(" =") {
            let page = lines.join("\n");
            if !page.trim().is_empty() {
                docs.push(page);
            }
            lines.clear();
        }
        lines.push(line);
    }
    docs.push(lines.join("\n"));
    docs
}

struct Rules {
    quote_digit: Regex,
    brackets: [Regex; 5],
    words: Regex,
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("a valid built-in pattern");
        Rules {
            quote_digit: re(r"/' [0-9]/"),
            brackets: [
                re(r"\(\s*([^\)]*?)\s*\)"),
                re(r"\[\s*([^\]]*?)\s*\]"),
                re(r"\{\s*([^}]*?)\s*\}"),
                re(r#""\s*([^"]*?)\s*""#),
                re(r"'\s*([^']*?)\s*'"),
            ],
            words: re(r"\s+"),
        }
    })
}

/// Undoes WikiText's tokenization (" @-@ " -> "-", " , " -> ", ", spaces inside brackets and
/// quotes, "= = =" headings, ...): lm-eval's wikitext detokenizer, rule by rule.
pub fn detokenize(page: &str) -> String {
    let r = rules();
    let mut s = page.replace("s '", "s'");
    s = r.quote_digit.replace_all(&s, regex::NoExpand("/'[0-9]/")).into_owned();
    for (from, to) in [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")] {
        s = s.replace(from, to);
    }
    for (from, to) in [(" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")] {
        s = s.replace(from, to);
    }
    let wrappers = [("(", ")"), ("[", "]"), ("{", "}"), ("\"", "\""), ("'", "'")];
    for (re, (open, close)) in r.brackets.iter().zip(wrappers) {
        s = re.replace_all(&s, |c: &regex::Captures| format!("{open}{}{close}", &c[1])).into_owned();
    }
    for (from, to) in [("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u{b0} ", "\u{b0}")] {
        s = s.replace(from, to);
    }
    for (from, to) in [(" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")] {
        s = s.replace(from, to);
    }
    s
}

/// Python's `len(re.split(r"\s+", page))`: whitespace runs + 1 (empty ends count).
pub fn count_words(page: &str) -> usize {
    rules().words.split(page).count()
}
