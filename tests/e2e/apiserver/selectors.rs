//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!key`) and field selectors.
//!
//! Field selectors accept any dotted path (the real server allows a fixed set per kind, always
//! including `metadata.name` and `metadata.namespace`; being more permissive never changes the
//! answer to a query the real server accepts).

use serde_json::Value;

use super::meta;
use super::status::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(LabelSelector(requirements))
    }

    /// From a `matchLabels`/`matchExpressions` object (StatefulSet and Service selectors).
    pub fn from_object(selector: &Value) -> LabelSelector {
        let mut requirements = Vec::new();
        let labels = selector.get("matchLabels").unwrap_or(selector);
        if let Some(map) = labels.as_object() {
            for (k, v) in map {
                if let Some(v) = v.as_str() {
                    requirements.push(Requirement {
                        key: k.clone(),
                        op: Op::Eq(v.into()),
                    });
                }
            }
        }
        for expr in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expr["key"].as_str().unwrap_or_default().to_string();
            let values: Vec<String> = expr["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let op = match expr["operator"].as_str() {
                Some("In") => Op::In(values),
                Some("NotIn") => Op::NotIn(values),
                Some("Exists") => Op::Exists,
                Some("DoesNotExist") => Op::NotExists,
                _ => continue,
            };
            requirements.push(Requirement { key, op });
        }
        LabelSelector(requirements)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        self.0.iter().all(|r| {
            let value = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            match (&r.op, value) {
                (Op::Eq(want), Some(v)) => v == want,
                (Op::Eq(_), None) => false,
                (Op::NotEq(want), v) => v != Some(want.as_str()),
                (Op::In(set), Some(v)) => set.iter().any(|s| s == v),
                (Op::In(_), None) => false,
                (Op::NotIn(set), v) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
                (Op::Exists, v) => v.is_some(),
                (Op::NotExists, v) => v.is_none(),
            }
        })
    }
}

/// Splits on commas outside parentheses (`a in (x,y),b` → `a in (x,y)`, `b`).
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_error(text: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: {why} in selector \"{text}\""
    ))
}

fn parse_requirement(part: &str) -> Result<Requirement, ApiError> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement {
            key: valid_key(key.trim(), part)?,
            op: Op::NotExists,
        });
    }
    for (token, build) in [
        ("!=", Op::NotEq as fn(String) -> Op),
        ("==", Op::Eq as fn(String) -> Op),
        ("=", Op::Eq as fn(String) -> Op),
    ] {
        if let Some((key, value)) = part.split_once(token) {
            return Ok(Requirement {
                key: valid_key(key.trim(), part)?,
                op: build(value.trim().to_string()),
            });
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words.as_slice() {
        let rest = rest.trim();
        let (is_in, list) = if let Some(list) = rest.strip_prefix("notin") {
            (false, list)
        } else if let Some(list) = rest.strip_prefix("in") {
            (true, list)
        } else {
            return Err(parse_error(part, "expected one of in, notin, =, ==, !="));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| parse_error(part, "expected a parenthesised list of values"))?;
        let values = inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        let key = valid_key(key, part)?;
        return Ok(Requirement {
            key,
            op: if is_in {
                Op::In(values)
            } else {
                Op::NotIn(values)
            },
        });
    }
    Ok(Requirement {
        key: valid_key(part, part)?,
        op: Op::Exists,
    })
}

fn valid_key(key: &str, part: &str) -> Result<String, ApiError> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok {
        Ok(key.to_string())
    } else {
        Err(parse_error(part, "invalid label key"))
    }
}

#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<FieldSelector, ApiError> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, negate, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, false, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            terms.push((field.trim().to_string(), negate, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    /// The value a `metadata.name=` term pins, if any (lets a watch skip other objects early).
    pub fn pinned_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, neg, _)| f == "metadata.name" && !neg)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, negate, want)| {
            let got = match meta::value_at(object, field) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) != *negate
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "labels": labels}})
    }

    #[test]
    fn label_selector_operators() {
        let p = pod(json!({"app": "pg", "tier": "db"}));
        for (sel, want) in [
            ("app=pg", true),
            ("app==pg", true),
            ("app!=pg", false),
            ("app!=web", true),
            ("app in (web, pg)", true),
            ("app notin (web,pg)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("missing!=x", true),
            ("app=pg,tier in (db),!missing", true),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&p),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("app in pg").is_err());
    }

    #[test]
    fn field_selector_paths() {
        let p = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {}});
        let sel = FieldSelector::parse("metadata.name=a,metadata.namespace!=x").unwrap();
        assert!(sel.matches(&p));
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(&p));
        assert_eq!(sel.pinned_name(), Some("a"));
    }
}
