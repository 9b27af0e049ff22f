//! Payload predicates: the `when = { correct = true, seconds = { gte = 60 } }` tables of the
//! catalogue, compiled once into field positions so evaluation never looks a name up.

use super::value::Value;

/// One comparison against one field.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Eq(Value),
    Ne(Value),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Exists(bool),
}

impl Op {
    #[inline]
    pub fn test(&self, v: &Value) -> bool {
        match self {
            Op::Eq(x) => v == x,
            Op::Ne(x) => v != x,
            Op::Gt(x) => v.as_f64().is_some_and(|a| a > *x),
            Op::Gte(x) => v.as_f64().is_some_and(|a| a >= *x),
            Op::Lt(x) => v.as_f64().is_some_and(|a| a < *x),
            Op::Lte(x) => v.as_f64().is_some_and(|a| a <= *x),
            Op::In(xs) => xs.contains(v),
            Op::NotIn(xs) => !xs.contains(v),
            Op::Exists(e) => (*v != Value::Null) == *e,
        }
    }

    /// The test in words a player can read, e.g. `plan is pro or team`, `seconds is at least
    /// 60`: explanations show these, never the Rust form of the operator.
    pub fn sentence(&self, field: &str) -> String {
        match self {
            Op::Eq(x) => format!("{field} is {}", words(x)),
            Op::Ne(x) => format!("{field} is not {}", words(x)),
            Op::Gt(x) => format!("{field} is more than {}", words(&Value::Num(*x))),
            Op::Gte(x) => format!("{field} is at least {}", words(&Value::Num(*x))),
            Op::Lt(x) => format!("{field} is less than {}", words(&Value::Num(*x))),
            Op::Lte(x) => format!("{field} is at most {}", words(&Value::Num(*x))),
            Op::In(xs) => format!("{field} is {}", either(xs, "or")),
            Op::NotIn(xs) => format!("{field} is neither {}", either(xs, "nor")),
            Op::Exists(true) => format!("{field} is given"),
            Op::Exists(false) => format!("{field} is not given"),
        }
    }
}

/// A value as a sentence shows it: text without quotes, whole numbers without a fraction.
pub fn words(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::Null => "nothing".into(),
        other => other.to_string(),
    }
}

/// `a`, `a or b`, `a, b or c`.
fn either(xs: &[Value], last: &str) -> String {
    let ws: Vec<String> = xs.iter().map(words).collect();
    match ws.split_last() {
        None => "nothing".into(),
        Some((one, [])) => one.clone(),
        Some((tail, head)) => format!("{} {last} {tail}", head.join(", ")),
    }
}

/// A comparison of one field with another field of the same event: `{ time = { lt = { field =
/// "record" } } }`, `{ score = { gt = { field = "previous_best", times = 2 } } }`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldCmp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl FieldCmp {
    /// Whether `a` compares with `times` × `b` as asked. Equality compares the values as they
    /// are; the others need two numbers, and a missing or non-number field fails them.
    #[inline]
    pub fn test(self, a: &Value, b: &Value, times: f64) -> bool {
        match self {
            FieldCmp::Eq => *a != Value::Null && a == b,
            FieldCmp::Ne => a != b,
            _ => match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => {
                    let y = y * times;
                    match self {
                        FieldCmp::Gt => x > y,
                        FieldCmp::Gte => x >= y,
                        FieldCmp::Lt => x < y,
                        _ => x <= y,
                    }
                }
                _ => false,
            },
        }
    }

    fn words(self) -> &'static str {
        match self {
            FieldCmp::Eq => "is",
            FieldCmp::Ne => "is not",
            FieldCmp::Gt => "is more than",
            FieldCmp::Gte => "is at least",
            FieldCmp::Lt => "is less than",
            FieldCmp::Lte => "is at most",
        }
    }
}

/// A conjunction of field tests. Field positions index whatever value slice the predicate was
/// compiled against: an event's declared fields, or the fields a cache entry keeps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pred {
    pub tests: Vec<(usize, Op)>,
    /// Comparisons between two fields: (field, comparison, other field, times).
    pub cross: Vec<(usize, FieldCmp, usize, f64)>,
}

impl Pred {
    pub fn always() -> Pred {
        Pred::default()
    }

    #[inline]
    pub fn matches(&self, fields: &[Value]) -> bool {
        let at = |i: usize| fields.get(i).unwrap_or(&Value::Null);
        self.tests.iter().all(|(i, op)| op.test(at(*i))) && self.cross.iter().all(|&(i, cmp, j, times)| cmp.test(at(i), at(j), times))
    }
}

/// A predicate as written, before field names are resolved: `(field name, op)` pairs in
/// document order. Kept so it can be compiled against several layouts and hashed canonically.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawPred {
    pub tests: Vec<(String, Op)>,
    /// Comparisons with another field, by name: (field, comparison, other field, times).
    pub cross: Vec<(String, FieldCmp, String, f64)>,
}

impl RawPred {
    /// Parses `{ field = literal | { op = operand, ... } }`. Errors name the field and operator.
    pub fn parse(v: Option<&serde_json::Value>) -> Result<RawPred, String> {
        let Some(v) = v else { return Ok(RawPred::default()) };
        let obj = v.as_object().ok_or("must be a table of field conditions")?;
        let mut tests = Vec::new();
        let mut cross = Vec::new();
        for (field, cond) in obj {
            match cond {
                serde_json::Value::Object(ops) => {
                    if ops.is_empty() {
                        return Err(format!("`{field}`: empty condition"));
                    }
                    for (op, operand) in ops {
                        match operand {
                            serde_json::Value::Object(other) => cross.push(parse_cross(field, op, other)?),
                            _ => tests.push((field.clone(), parse_op(field, op, operand)?)),
                        }
                    }
                }
                serde_json::Value::Array(_) => {
                    return Err(format!("`{field}`: use {{ in = [...] }} to match one of several values"));
                }
                lit => tests.push((field.clone(), Op::Eq(Value::from_json(lit)))),
            }
        }
        Ok(RawPred { tests, cross })
    }

    /// Every field the predicate reads, the other side of field comparisons included.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.tests.iter().map(|(f, _)| f.as_str()).chain(self.cross.iter().flat_map(|(a, _, b, _)| [a.as_str(), b.as_str()]))
    }

    /// Resolves names to positions with `pos`, which returns None for a field that is not there.
    pub fn compile(&self, mut pos: impl FnMut(&str) -> Option<usize>) -> Result<Pred, String> {
        let mut tests = Vec::with_capacity(self.tests.len());
        for (f, op) in &self.tests {
            let i = pos(f).ok_or_else(|| format!("`{f}` is not a declared field"))?;
            tests.push((i, op.clone()));
        }
        let mut cross = Vec::with_capacity(self.cross.len());
        for (a, cmp, b, times) in &self.cross {
            let i = pos(a).ok_or_else(|| format!("`{a}` is not a declared field"))?;
            let j = pos(b).ok_or_else(|| format!("`{b}` is not a declared field"))?;
            cross.push((i, *cmp, j, *times));
        }
        Ok(Pred { tests, cross })
    }

    /// The conjunction in words: `correct is true and seconds is at least 60`; empty when the
    /// predicate has no tests.
    pub fn sentence(&self) -> String {
        let cross = self.cross.iter().map(|(a, cmp, b, times)| {
            if *times == 1.0 { format!("{a} {} {b}", cmp.words()) } else { format!("{a} {} {} times {b}", cmp.words(), words(&Value::Num(*times))) }
        });
        self.tests.iter().map(|(f, op)| op.sentence(f)).chain(cross).collect::<Vec<_>>().join(" and ")
    }

    /// A canonical text used to give identical stats one identity.
    pub fn canonical(&self) -> String {
        let mut parts: Vec<String> = self.tests.iter().map(|(f, op)| format!("{f}:{op:?}")).collect();
        parts.extend(self.cross.iter().map(|(a, cmp, b, times)| format!("{a}:{cmp:?}:field:{b}:{times}")));
        parts.sort();
        parts.join(",")
    }
}

/// `{ field = "other", times = 2 }` as the operand of `op`: a comparison with another field.
fn parse_cross(field: &str, op: &str, other: &serde_json::Map<String, serde_json::Value>) -> Result<(String, FieldCmp, String, f64), String> {
    let cmp = match op {
        "eq" => FieldCmp::Eq,
        "ne" => FieldCmp::Ne,
        "gt" => FieldCmp::Gt,
        "gte" => FieldCmp::Gte,
        "lt" => FieldCmp::Lt,
        "lte" => FieldCmp::Lte,
        _ => return Err(format!("`{field}.{op}` cannot compare with another field (eq, ne, gt, gte, lt and lte can)")),
    };
    if let Some(k) = other.keys().find(|k| *k != "field" && *k != "times") {
        return Err(format!("`{field}.{op}`: unknown key `{k}` (give field = \"name\" and optionally times = N)"));
    }
    let name = other.get("field").and_then(|f| f.as_str()).ok_or_else(|| format!("`{field}.{op}.field` must name another field of the event"))?;
    let times = match other.get("times") {
        None => 1.0,
        Some(_) if matches!(cmp, FieldCmp::Eq | FieldCmp::Ne) => return Err(format!("`{field}.{op}.times` goes with gt, gte, lt and lte only")),
        Some(t) => t.as_f64().filter(|t| t.is_finite()).ok_or_else(|| format!("`{field}.{op}.times` needs a number"))?,
    };
    Ok((field.to_string(), cmp, name.to_string(), times))
}

fn parse_op(field: &str, op: &str, operand: &serde_json::Value) -> Result<Op, String> {
    let num = || operand.as_f64().ok_or_else(|| format!("`{field}.{op}` needs a number"));
    let list = || -> Result<Vec<Value>, String> {
        operand
            .as_array()
            .map(|xs| xs.iter().map(Value::from_json).collect())
            .ok_or_else(|| format!("`{field}.{op}` needs a list"))
    };
    Ok(match op {
        "eq" => Op::Eq(Value::from_json(operand)),
        "ne" => Op::Ne(Value::from_json(operand)),
        "gt" => Op::Gt(num()?),
        "gte" => Op::Gte(num()?),
        "lt" => Op::Lt(num()?),
        "lte" => Op::Lte(num()?),
        "in" => Op::In(list()?),
        "not_in" => Op::NotIn(list()?),
        "exists" => Op::Exists(operand.as_bool().ok_or_else(|| format!("`{field}.exists` needs true or false"))?),
        other => {
            return Err(format!(
                "`{field}`: unknown operator `{other}` (use eq, ne, gt, gte, lt, lte, in, not_in, exists)"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::value::{b, n, s};
    use serde_json::json;

    fn compile(v: serde_json::Value) -> Pred {
        let names = ["correct", "seconds", "lesson"];
        RawPred::parse(Some(&v)).unwrap().compile(|f| names.iter().position(|x| *x == f)).unwrap()
    }

    #[test]
    fn predicates_from_the_catalogue_match_as_written() {
        let fields = [b(true), n(75.0), s("l2")];
        let table = [
            (json!({"correct": true}), true),
            (json!({"correct": false}), false),
            (json!({"seconds": {"gte": 60}}), true),
            (json!({"seconds": {"gte": 75}}), true),
            (json!({"seconds": {"gt": 75}}), false),
            (json!({"seconds": {"gte": 60, "lt": 70}}), false),
            (json!({"lesson": {"in": ["l1", "l2"]}}), true),
            (json!({"lesson": {"not_in": ["l1", "l2"]}}), false),
            (json!({"lesson": {"exists": true}, "correct": true}), true),
            (json!({}), true),
        ];
        for (p, want) in table {
            assert_eq!(compile(p.clone()).matches(&fields), want, "{p}");
        }
    }

    #[test]
    fn predicates_read_as_sentences() {
        let table = [
            (json!({"plan": {"in": ["pro", "team"]}}), "plan is pro or team"),
            (json!({"plan": {"not_in": ["free", "trial", "edu"]}}), "plan is neither free, trial nor edu"),
            (json!({"correct": true, "seconds": {"gte": 60, "lt": 600.5}}), "correct is true and seconds is at least 60 and seconds is less than 600.5"),
            (json!({"hint": {"exists": false}}), "hint is not given"),
            (json!({"lesson": {"ne": "l1"}}), "lesson is not l1"),
        ];
        for (p, want) in table {
            assert_eq!(RawPred::parse(Some(&p)).unwrap().sentence(), want, "{p}");
        }
    }

    #[test]
    fn fields_compare_with_other_fields_of_the_same_event() {
        let names = ["time", "record", "score", "best", "city", "home"];
        let fields = [n(61.0), n(62.5), n(200.0), n(99.0), s("Lyon"), s("Lyon")];
        let table = [
            (json!({"time": {"lt": {"field": "record"}}}), true, "time is less than record"),
            (json!({"time": {"gte": {"field": "record"}}}), false, "time is at least record"),
            (json!({"score": {"gt": {"field": "best", "times": 2}}}), true, "score is more than 2 times best"),
            (json!({"score": {"gt": {"field": "best", "times": 2.1}}}), false, "score is more than 2.1 times best"),
            (json!({"city": {"eq": {"field": "home"}}}), true, "city is home"),
            (json!({"city": {"ne": {"field": "home"}}, "score": {"gte": 100}}), false, "score is at least 100 and city is not home"),
            // A number never compares with a text.
            (json!({"score": {"lt": {"field": "city"}}}), false, "score is less than city"),
        ];
        for (p, want, said) in table {
            let raw = RawPred::parse(Some(&p)).unwrap();
            assert_eq!(raw.sentence(), said);
            let pred = raw.compile(|f| names.iter().position(|x| *x == f)).unwrap();
            assert_eq!(pred.matches(&fields), want, "{p}");
        }
        let bad = [
            (json!({"a": {"in": {"field": "b"}}}), "`a.in` cannot compare with another field (eq, ne, gt, gte, lt and lte can)"),
            (json!({"a": {"gt": {"feild": "b"}}}), "`a.gt`: unknown key `feild` (give field = \"name\" and optionally times = N)"),
            (json!({"a": {"gt": {"field": 3}}}), "`a.gt.field` must name another field of the event"),
            (json!({"a": {"eq": {"field": "b", "times": 2}}}), "`a.eq.times` goes with gt, gte, lt and lte only"),
            (json!({"a": {"lt": {"field": "b", "times": "x"}}}), "`a.lt.times` needs a number"),
        ];
        for (p, want) in bad {
            assert_eq!(RawPred::parse(Some(&p)).unwrap_err(), want);
        }
        let err = RawPred::parse(Some(&json!({"time": {"lt": {"field": "nope"}}}))).unwrap().compile(|f| names.iter().position(|x| *x == f)).unwrap_err();
        assert_eq!(err, "`nope` is not a declared field");
    }

    #[test]
    fn bad_predicates_are_named() {
        let err = RawPred::parse(Some(&json!({"seconds": {"atleast": 3}}))).unwrap_err();
        assert!(err.contains("seconds") && err.contains("atleast"), "{err}");
        let err = RawPred::parse(Some(&json!({"seconds": {"gte": "x"}}))).unwrap_err();
        assert!(err.contains("needs a number"), "{err}");
        let err = RawPred::parse(Some(&json!({"nope": true}))).unwrap().compile(|_| None).unwrap_err();
        assert!(err.contains("`nope`"), "{err}");
    }
}
