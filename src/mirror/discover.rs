//! Finding a source's newest version: links in a web server's directory listing, ordered the
//! way people number versions (`20241008` < `20241108.1`, `0.6.9` < `0.6.10`).

use std::cmp::Ordering;

use regex::Regex;

/// The largest directory listing read.
pub const MAX_LISTING: usize = 4 << 20;

/// The relative links of an HTML directory listing (Apache, nginx and lighttpd autoindex):
/// the `href` values that name an entry of this directory, `/` kept on directories.
pub fn hrefs(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("href=") {
        let start = from + at + 5;
        let rest = &html[start..];
        let (value, used) = match rest.chars().next() {
            Some(quote @ ('"' | '\'')) => match rest[1..].find(quote) {
                Some(end) => (&rest[1..1 + end], end + 2),
                None => break,
            },
            _ => {
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '>')
                    .unwrap_or(rest.len());
                (&rest[..end], end)
            }
        };
        from = start + used.max(1);
        let value = value.strip_prefix("./").unwrap_or(value);
        let value = value.split(['?', '#']).next().unwrap_or("");
        let name = value.trim_end_matches('/');
        if name.is_empty()
            || name.contains('/')
            || name == ".."
            || name == "."
            || value.contains(':')
        {
            continue;
        }
        let value = value.replace("%2B", "+").replace("%2b", "+");
        if !found.contains(&value) {
            found.push(value);
        }
    }
    found
}

/// Orders versions: runs of digits by value, everything else as text.
pub fn compare_versions(left: &str, right: &str) -> Ordering {
    let (mut left, mut right) = (left, right);
    loop {
        match (left.is_empty(), right.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let digits = |text: &str| {
            text.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len())
        };
        let others = |text: &str| {
            text.find(|c: char| c.is_ascii_digit())
                .unwrap_or(text.len())
        };
        let left_digit = left.starts_with(|c: char| c.is_ascii_digit());
        let right_digit = right.starts_with(|c: char| c.is_ascii_digit());
        let order = if left_digit && right_digit {
            let (a, b) = (&left[..digits(left)], &right[..digits(right)]);
            let (a_trim, b_trim) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
            let order = a_trim
                .len()
                .cmp(&b_trim.len())
                .then_with(|| a_trim.cmp(b_trim));
            left = &left[a.len()..];
            right = &right[b.len()..];
            order
        } else {
            let (a, b) = (&left[..others(left)], &right[..others(right)]);
            left = &left[a.len()..];
            right = &right[b.len()..];
            a.cmp(b)
        };
        if order != Ordering::Equal {
            return order;
        }
    }
}

/// The version a name carries under `pattern`: its `version` group, else its first group,
/// else the whole name. `None` if the name does not match.
pub fn version_of(pattern: &Regex, name: &str) -> Option<String> {
    let captures = pattern.captures(name)?;
    let found = captures
        .name("version")
        .or_else(|| captures.get(1))
        .or_else(|| captures.get(0))?;
    Some(found.as_str().to_owned())
}

/// The name with the newest version among those `pattern` matches, and that version. Two
/// names with the same newest version are an error: the catalog must say which one.
pub fn newest<'a>(
    names: impl IntoIterator<Item = &'a str>,
    pattern: &Regex,
) -> Result<Option<(String, String)>, String> {
    let mut best: Option<(String, String)> = None;
    let mut tie: Option<String> = None;
    for name in names {
        let Some(version) = version_of(pattern, name) else {
            continue;
        };
        match &best {
            Some((_, known)) => match compare_versions(&version, known) {
                Ordering::Greater => {
                    best = Some((name.to_owned(), version));
                    tie = None;
                }
                Ordering::Equal if best.as_ref().is_some_and(|(known, _)| known != name) => {
                    tie = Some(name.to_owned());
                }
                _ => {}
            },
            None => best = Some((name.to_owned(), version)),
        }
    }
    if let (Some(other), Some((name, version))) = (tie, &best) {
        return Err(format!(
            "{name} and {other} both match as version {version}; narrow the pattern"
        ));
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_yield_their_entries() {
        let html = r#"<a href="?C=N;O=D">Name</a> <a href="/ubuntu/">Parent</a>
<a href="release-20241008/">release-20241008/</a>
<a href='release-20241108.1/'>x</a> <A HREF=SHA256SUMS>SHA256SUMS</A>
<a href="https://elsewhere.example/x">x</a> <a href="../">up</a> <a href="./a%2Bb.img">"#;
        assert_eq!(
            hrefs(html),
            [
                "release-20241008/",
                "release-20241108.1/",
                "SHA256SUMS",
                "a+b.img"
            ]
        );
    }

    #[test]
    fn versions_order_like_people_number_them() {
        assert_eq!(compare_versions("0.6.9", "0.6.10"), Ordering::Less);
        assert_eq!(
            compare_versions("20241108.1", "20241108"),
            Ordering::Greater
        );
        assert_eq!(compare_versions("41-1.4", "41-1.10"), Ordering::Less);
        assert_eq!(compare_versions("007", "7"), Ordering::Equal);
        assert_eq!(compare_versions("v3.20", "v3.9"), Ordering::Greater);
    }

    #[test]
    fn the_newest_match_wins_and_ties_are_errors() {
        let dirs = Regex::new(r"^(?:release-(\d+(?:\.\d+)?)/)$").unwrap();
        let names = [
            "release-20241008/",
            "release-20241108.1/",
            "release-20241108/",
            "x/",
        ];
        assert_eq!(
            newest(names, &dirs).unwrap(),
            Some(("release-20241108.1/".into(), "20241108.1".into()))
        );
        let loose = Regex::new(r"^(?:a-(?P<version>\d+)\.(img|qcow2))$").unwrap();
        assert!(newest(["a-1.img", "a-1.qcow2"], &loose).is_err());
        assert_eq!(newest(["b"], &loose).unwrap(), None);
    }
}
