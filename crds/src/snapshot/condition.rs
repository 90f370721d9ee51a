//! Policy `when:` conditions: CEL expressions checked and costed when a snapshot is compiled,
//! evaluated per decision over bounded inputs. Every way an evaluation can go wrong has an
//! outcome of its own, so the decision can fail closed on it.

use std::sync::{Arc, LazyLock, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::context::VariableResolver;
use cel::objects::{Key, Map as CelMap};
use cel::parser::Parser;
use cel::{Context, Value};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value as Json;

use super::ItemKind;
use crate::identity::Identity;

/// Longest accepted expression (characters).
pub const MAX_SOURCE: usize = 4096;
/// Deepest accepted nesting of the parsed expression.
const MAX_DEPTH: u16 = 32;
/// Most operators, selections and brackets in one expression: long operator chains nest as
/// deeply as brackets do, and the parser and interpreter recurse on them.
const MAX_OPERATORS: usize = 256;
/// The function a field selection is rewritten to (see [`strict_selects`]).
const FIELD: &str = "@field";
/// Most cost units an expression may be estimated at (see [`Condition::cost`]).
pub const MAX_COST: u64 = 50_000;
/// A macro (`all`, `exists`, `exists_one`, `map`, `filter`) runs its body once per item of its
/// range; an input holds at most this many values, so this is the most iterations it can make.
const MACRO_ITERATIONS: u64 = MAX_VALUES as u64;
/// What one call of a function or operator that walks strings or lists costs.
const WALK_COST: u64 = 8;
/// A regular expression is compiled on every `matches` call.
const REGEX_COST: u64 = 256;

/// Inputs (`args`, `claims`) larger than these are not evaluated: the outcome is
/// [`Outcome::Exceeded`] (no match for Allow, match for Deny).
pub const MAX_VALUES: usize = 1024;
pub const MAX_INPUT_DEPTH: usize = 32;
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// The variables an expression may name.
pub const VARIABLES: [&str; 12] = [
    "user", "groups", "roles", "claims", "kind", "name", "tool", "resource", "prompt", "args",
    "target", "now",
];

/// Functions and operators an expression may call (the interpreter's own, plus `cleanPath`).
const FUNCTIONS: &[&str] = &[
    "_?_:_",
    "_&&_",
    "_||_",
    "!_",
    "_-_",
    "_+_",
    "_*_",
    "_/_",
    "_%_",
    "_==_",
    "_!=_",
    "_>=_",
    "_<=_",
    "_>_",
    "_<_",
    "-_",
    "_[_]",
    "@in",
    "@not_strictly_false",
    "contains",
    "size",
    "startsWith",
    "endsWith",
    "matches",
    "string",
    "int",
    "uint",
    "double",
    "bytes",
    "max",
    "min",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "cleanPath",
];

/// Cheap calls: logic, comparisons of scalars, arithmetic, indexing.
const CHEAP: &[&str] = &[
    "_?_:_",
    "_&&_",
    "_||_",
    "!_",
    "_-_",
    "_*_",
    "_/_",
    "_%_",
    "_>=_",
    "_<=_",
    "_>_",
    "_<_",
    "-_",
    "_[_]",
    "@not_strictly_false",
    "size",
    "int",
    "uint",
    "double",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("condition is {0} characters long; at most {MAX_SOURCE} are accepted")]
    TooLong(usize),
    #[error("condition does not parse: {0}")]
    Parse(String),
    #[error("condition names unknown variable {0:?} (known: {known})", known = VARIABLES.join(", "))]
    UnknownVariable(String),
    #[error("condition calls unknown function {0:?}")]
    UnknownFunction(String),
    #[error("condition uses {0:?}, which policy conditions do not support")]
    Unsupported(String),
    #[error("condition has more than {MAX_OPERATORS} operators, selections and brackets")]
    TooComplex,
    #[error(
        "matches() needs a literal pattern (a pattern taken from the request would be compiled on every call)"
    )]
    DynamicRegex,
    #[error(
        "condition is too costly: estimated {0} units, at most {MAX_COST} (a macro runs its body up to {MACRO_ITERATIONS} times; nest no macros and keep string work out of loops)"
    )]
    TooCostly(u64),
}

impl ConditionError {
    /// The `reason` of the Policy's `Accepted=False` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooCostly(_) => "ConditionTooCostly",
            _ => "InvalidCondition",
        }
    }
}

/// What one evaluation of a condition came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    True,
    False,
    /// The expression failed at run time (a missing field, a wrong type, a non-boolean result).
    Error,
    /// An input was too large or too deep to evaluate over.
    Exceeded,
    /// The expression reads `args` and there are none yet (a list): it may hold for a call.
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "true",
            Self::False => "false",
            Self::Error => "error",
            Self::Exceeded => "exceeded",
            Self::Unknown => "unknown",
        }
    }
}

/// What a decision is about, beyond who asks: the item, the Target and (for calls) arguments.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub kind: ItemKind,
    pub name: &'a str,
    /// The Target's name.
    pub target: &'a str,
    /// The call's arguments; `None` when listing (no arguments exist yet).
    pub args: Option<&'a Json>,
    /// Seconds since the Unix epoch.
    pub now: i64,
}

impl<'a> Request<'a> {
    /// A decision made while listing, or where no call is at hand.
    pub fn listing(kind: ItemKind, name: &'a str, target: &'a str) -> Self {
        Self {
            kind,
            name,
            target,
            args: None,
            now: now_seconds(),
        }
    }
}

pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A compiled condition. Serialized as its source and compiled again on deserialization.
#[derive(Clone)]
pub struct Condition {
    source: Arc<str>,
    expr: Arc<IdedExpr>,
    uses_args: bool,
    uses_claims: bool,
    cost: u64,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Condition::compile(&source).map_err(serde::de::Error::custom)
    }
}

impl Condition {
    /// Parses, checks names and estimates the cost; refuses what could not be evaluated safely.
    pub fn compile(source: &str) -> Result<Self, ConditionError> {
        let chars = source.chars().count();
        if chars > MAX_SOURCE {
            return Err(ConditionError::TooLong(chars));
        }
        prescan(source)?;
        let mut expr = Parser::new()
            .max_recursion_depth(MAX_DEPTH)
            .parse(source)
            .map_err(|e| ConditionError::Parse(one_line(&e.to_string())))?;
        let mut check = Check::default();
        let cost = check.walk(&expr, &mut Vec::new())?;
        if cost > MAX_COST {
            return Err(ConditionError::TooCostly(cost));
        }
        strict_selects(&mut expr);
        Ok(Self {
            source: source.into(),
            expr: Arc::new(expr),
            uses_args: check.args,
            uses_claims: check.claims,
            cost,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The estimated cost: every node costs one unit; a call that walks strings or lists costs
    /// 8, `matches` 256; a macro's body counts once per possible iteration (1024).
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// Whether the expression reads `args` (so a list cannot decide it).
    pub fn uses_args(&self) -> bool {
        self.uses_args
    }

    /// Evaluates over the caller and the request. Never panics, never runs unbounded.
    pub fn eval(&self, id: &Identity, req: &Request<'_>) -> Outcome {
        let args = match (self.uses_args, req.args) {
            (false, _) => None,
            (true, None) => return Outcome::Unknown,
            (true, Some(a)) => match to_cel(a) {
                Some(v) => Some(v),
                None => return Outcome::Exceeded,
            },
        };
        let claims = if self.uses_claims {
            match id.claims.map().map_or(Some(empty_map()), object_to_cel) {
                Some(v) => Some(v),
                None => return Outcome::Exceeded,
            }
        } else {
            None
        };
        let vars = Vars {
            id,
            req,
            args,
            claims,
            lists: OnceLock::new(),
        };
        let mut ctx = ROOT.new_inner_scope();
        ctx.set_variable_resolver(&vars);
        match Value::resolve(&self.expr, &ctx) {
            Ok(Value::Bool(true)) => Outcome::True,
            Ok(Value::Bool(false)) => Outcome::False,
            _ => Outcome::Error,
        }
    }
}

/// Refuses, before parsing, what the parser would recurse too deeply on and what cel 0.13
/// mis-parses: `!!x` and `--x` evaluate as `!x` and `-x` there.
fn prescan(source: &str) -> Result<(), ConditionError> {
    let mut operators = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut last_unary: Option<char> = None;
    for c in source.chars() {
        if let Some(q) = quote {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, c) if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                quote = Some(c);
                last_unary = None;
            }
            c if c.is_whitespace() => {}
            '!' | '-' => {
                operators += 1;
                if last_unary == Some(c) {
                    return Err(ConditionError::Unsupported(format!(
                        "{c}{c} (write the expression without the repeated {c})"
                    )));
                }
                last_unary = Some(c);
            }
            c => {
                if "+*/%<>=&|?:.([{".contains(c) {
                    operators += 1;
                }
                last_unary = None;
            }
        }
    }
    if operators > MAX_OPERATORS {
        return Err(ConditionError::TooComplex);
    }
    Ok(())
}

/// cel 0.13 evaluates a field selection on anything but a map to `false`; a Deny on
/// `args.opts.force` would then not apply when `opts` is a string. Every selection (not `has()`)
/// becomes a call of [`FIELD`], which fails on a non-map and on a missing key.
fn strict_selects(e: &mut IdedExpr) {
    match &mut e.expr {
        Expr::Select(sel) if !sel.test => {
            strict_selects(&mut sel.operand);
            let operand = std::mem::take(&mut *sel.operand);
            let field = IdedExpr {
                id: e.id,
                expr: Expr::Literal(cel::common::ast::LiteralValue::String(
                    sel.field.as_str().into(),
                )),
            };
            e.expr = Expr::Call(cel::common::ast::CallExpr {
                func_name: FIELD.to_owned(),
                target: None,
                args: vec![operand, field],
            });
        }
        Expr::Select(sel) => strict_selects(&mut sel.operand),
        Expr::Call(call) => {
            if let Some(t) = &mut call.target {
                strict_selects(t);
            }
            call.args.iter_mut().for_each(strict_selects);
        }
        Expr::Comprehension(c) => {
            for x in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                strict_selects(x);
            }
        }
        Expr::List(l) => l.elements.iter_mut().for_each(strict_selects),
        Expr::Map(m) => {
            for entry in &mut m.entries {
                if let EntryExpr::MapEntry(me) = &mut entry.expr {
                    strict_selects(&mut me.key);
                    strict_selects(&mut me.value);
                }
            }
        }
        _ => {}
    }
}

/// `m.f`: the value under key `f` of map `m`; an error for a missing key or a non-map.
fn field(m: Value, key: Arc<String>) -> Result<Value, cel::ExecutionError> {
    match m {
        Value::Map(map) => map
            .map
            .get(&Key::String(key.clone()))
            .cloned()
            .ok_or_else(|| cel::ExecutionError::no_such_key(&key)),
        other => Err(cel::ExecutionError::function_error(
            "select",
            format!("no field {key:?} on a {}", other.type_of()),
        )),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The interpreter's functions, registered once.
static ROOT: LazyLock<Context<'static>> = LazyLock::new(|| {
    let mut ctx = Context::default();
    ctx.add_function("cleanPath", |p: Arc<String>| clean_path(&p));
    ctx.add_function(FIELD, field);
    ctx
});

/// Lexically normalises a path: `.` and empty segments dropped, `..` removes its parent (never
/// above the root). `cleanPath("/srv/shared/../etc")` is `/etc`, so a prefix test on it cannot be
/// walked around.
pub fn clean_path(p: &str) -> String {
    let absolute = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// The variables of one evaluation, built when first read.
struct Vars<'a> {
    id: &'a Identity,
    req: &'a Request<'a>,
    args: Option<Value>,
    claims: Option<Value>,
    lists: OnceLock<(Value, Value)>,
}

impl Vars<'_> {
    fn lists(&self) -> &(Value, Value) {
        self.lists.get_or_init(|| {
            let list = |items: &[Arc<str>]| {
                Value::List(Arc::new(
                    items
                        .iter()
                        .map(|s| Value::String(Arc::new(s.to_string())))
                        .collect(),
                ))
            };
            (list(&self.id.groups), list(&self.id.roles))
        })
    }
}

impl VariableResolver for Vars<'_> {
    fn resolve(&self, variable: &str) -> Option<Value> {
        let s = |v: &str| Some(Value::String(Arc::new(v.to_owned())));
        let named = |k: ItemKind| {
            s(if self.req.kind == k {
                self.req.name
            } else {
                ""
            })
        };
        match variable {
            "user" => s(&self.id.user),
            "groups" => Some(self.lists().0.clone()),
            "roles" => Some(self.lists().1.clone()),
            "claims" => self.claims.clone(),
            "kind" => s(self.req.kind.as_str()),
            "name" => s(self.req.name),
            "tool" => named(ItemKind::Tool),
            "resource" => named(ItemKind::Resource),
            "prompt" => named(ItemKind::Prompt),
            "args" => self.args.clone(),
            "target" => s(self.req.target),
            "now" => chrono::DateTime::from_timestamp(self.req.now, 0)
                .map(|t| Value::Timestamp(t.fixed_offset())),
            _ => None,
        }
    }
}

fn empty_map() -> Value {
    Value::Map(CelMap {
        map: Arc::default(),
    })
}

/// JSON → CEL within [`MAX_VALUES`], [`MAX_INPUT_DEPTH`] and [`MAX_INPUT_BYTES`]; `None` beyond.
fn to_cel(v: &Json) -> Option<Value> {
    let mut budget = Budget {
        values: MAX_VALUES,
        bytes: MAX_INPUT_BYTES,
    };
    budget.convert(v, 0)
}

fn object_to_cel(m: &serde_json::Map<String, Json>) -> Option<Value> {
    let mut budget = Budget {
        values: MAX_VALUES,
        bytes: MAX_INPUT_BYTES,
    };
    budget.object(m, 0)
}

struct Budget {
    values: usize,
    bytes: usize,
}

impl Budget {
    fn take(&mut self, values: usize, bytes: usize) -> Option<()> {
        self.values = self.values.checked_sub(values)?;
        self.bytes = self.bytes.checked_sub(bytes)?;
        Some(())
    }

    fn convert(&mut self, v: &Json, depth: usize) -> Option<Value> {
        if depth > MAX_INPUT_DEPTH {
            return None;
        }
        Some(match v {
            Json::Null => {
                self.take(1, 0)?;
                Value::Null
            }
            Json::Bool(b) => {
                self.take(1, 0)?;
                Value::Bool(*b)
            }
            Json::Number(n) => {
                self.take(1, 0)?;
                match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => Value::Int(i),
                    (None, Some(u), _) => Value::UInt(u),
                    (_, _, Some(f)) => Value::Float(f),
                    _ => Value::Null,
                }
            }
            Json::String(s) => {
                self.take(1, s.len())?;
                Value::String(Arc::new(s.clone()))
            }
            Json::Array(items) => {
                self.take(1, 0)?;
                let mut out = Vec::with_capacity(items.len().min(MAX_VALUES));
                for i in items {
                    out.push(self.convert(i, depth + 1)?);
                }
                Value::List(Arc::new(out))
            }
            Json::Object(m) => self.object(m, depth)?,
        })
    }

    fn object(&mut self, m: &serde_json::Map<String, Json>, depth: usize) -> Option<Value> {
        self.take(1, 0)?;
        let mut out = std::collections::HashMap::with_capacity(m.len().min(MAX_VALUES));
        for (k, v) in m {
            self.take(0, k.len())?;
            out.insert(
                Key::String(Arc::new(k.clone())),
                self.convert(v, depth + 1)?,
            );
        }
        Some(Value::Map(CelMap { map: Arc::new(out) }))
    }
}

/// The compile-time walk: names checked against what exists, cost summed.
#[derive(Default)]
struct Check {
    args: bool,
    claims: bool,
}

impl Check {
    /// The cost of `e`; `scope` holds the macro variables visible at this point.
    fn walk(&mut self, e: &IdedExpr, scope: &mut Vec<String>) -> Result<u64, ConditionError> {
        Ok(match &e.expr {
            Expr::Unspecified => 1,
            Expr::Literal(_) => 1,
            Expr::Ident(name) => {
                if name.starts_with('@') || scope.iter().any(|s| s == name) {
                    1
                } else if VARIABLES.contains(&name.as_str()) {
                    self.args |= name == "args";
                    self.claims |= name == "claims";
                    1
                } else {
                    return Err(ConditionError::UnknownVariable(name.clone()));
                }
            }
            Expr::Select(sel) => 1 + self.walk(&sel.operand, scope)?,
            Expr::List(l) => l.elements.iter().try_fold(1u64, |acc, el| {
                Ok::<_, ConditionError>(acc.saturating_add(self.walk(el, scope)?))
            })?,
            Expr::Map(m) => {
                let mut cost = 1u64;
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            cost = cost
                                .saturating_add(self.walk(&me.key, scope)?)
                                .saturating_add(self.walk(&me.value, scope)?);
                        }
                        EntryExpr::StructField(_) => {
                            return Err(ConditionError::Unsupported("message literals".into()));
                        }
                    }
                }
                cost
            }
            Expr::Struct(_) => return Err(ConditionError::Unsupported("message literals".into())),
            Expr::Call(call) => self.call(call, scope)?,
            Expr::Comprehension(c) => {
                let range = self.walk(&c.iter_range, scope)?;
                let init = self.walk(&c.accu_init, scope)?;
                let pushed = 2 + usize::from(c.iter_var2.is_some());
                scope.push(c.iter_var.clone());
                scope.extend(c.iter_var2.clone());
                scope.push(c.accu_var.clone());
                let body = [&c.loop_cond, &c.loop_step]
                    .into_iter()
                    .try_fold(0u64, |acc, x| {
                        Ok::<_, ConditionError>(acc.saturating_add(self.walk(x, scope)?))
                    });
                let result = self.walk(&c.result, scope);
                scope.truncate(scope.len() - pushed);
                range
                    .saturating_add(init)
                    .saturating_add(body?.saturating_mul(MACRO_ITERATIONS))
                    .saturating_add(result?)
            }
        })
    }

    fn call(
        &mut self,
        call: &cel::common::ast::CallExpr,
        scope: &mut Vec<String>,
    ) -> Result<u64, ConditionError> {
        let f = call.func_name.as_str();
        if !FUNCTIONS.contains(&f) {
            return Err(ConditionError::UnknownFunction(f.to_owned()));
        }
        if f == "matches"
            && !matches!(
                call.args.last().map(|a| &a.expr),
                Some(Expr::Literal(cel::common::ast::LiteralValue::String(_)))
            )
        {
            return Err(ConditionError::DynamicRegex);
        }
        let own = match f {
            "matches" => REGEX_COST,
            f if CHEAP.contains(&f) => 1,
            _ => WALK_COST,
        };
        let mut cost = own;
        if let Some(t) = &call.target {
            cost = cost.saturating_add(self.walk(t, scope)?);
        }
        for a in &call.args {
            cost = cost.saturating_add(self.walk(a, scope)?);
        }
        Ok(cost)
    }
}
