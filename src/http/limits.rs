//! Checks on a request's size and shape made before it is parsed.

use crate::domain::Error;

/// Refuse a JSON text whose arrays and objects nest deeper than `max`, before a parser
/// recurses into it. Brackets inside strings do not count; anything that is not valid
/// JSON is left for the parser to name.
pub fn check_json_depth(body: &[u8], max: usize) -> Result<(), Error> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(Error::BadRequestBody(format!(
                        "request body nests arrays and objects deeper than {max} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting_outside_strings_only() {
        assert!(check_json_depth(br#"{"a":1}"#, 1).is_ok());
        assert!(check_json_depth(br#"{"a":{"b":1}}"#, 1).is_err());
        assert!(check_json_depth(br#"{"a":{"b":1}}"#, 2).is_ok());
        assert!(check_json_depth(br#"{"a":"[[[[{{{{"}"#, 1).is_ok());
        assert!(check_json_depth(br#"{"a":"\"[[[["}"#, 1).is_ok());
        assert!(check_json_depth(br#"{"a":"\\"}"#, 1).is_ok());
        assert!(check_json_depth(br#"{"a":"\\",  "b":[[1]]}"#, 2).is_err());
        let deep = "[".repeat(100_000);
        let err = check_json_depth(deep.as_bytes(), 32)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("deeper than 32"), "{err}");
        // Siblings do not add up.
        assert!(check_json_depth(b"[[],[],[],[]]", 2).is_ok());
    }
}
