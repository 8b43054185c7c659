//! Turns an `apache_avro::Schema` (parsed and validated by that crate) into the plan the encoder
//! and decoder walk: a flat arena of nodes, named types resolved to node ids (so recursive
//! records are plain cycles of ids), enum symbols and union branch tests precomputed. Field
//! defaults are kept as JSON here; `encode::fill_defaults` encodes them once into the plan.

use std::collections::HashMap;

use apache_avro::schema::{InnerDecimalSchema, Name, Schema as A, UuidSchema};
use serde_json::Value;

use super::logical::Unit;

/// Index of a node in [`Plan::nodes`].
pub(crate) type NodeId = u32;

/// JSON value kinds, as bits, for the shallow "could this branch take it" test of unions.
pub(crate) const K_NULL: u8 = 1;
pub(crate) const K_BOOL: u8 = 2;
pub(crate) const K_NUM: u8 = 4;
pub(crate) const K_STR: u8 = 8;
pub(crate) const K_ARR: u8 = 16;
pub(crate) const K_OBJ: u8 = 32;

/// The kind bit of a JSON value.
pub(crate) fn kind_of(v: &Value) -> u8 {
    match v {
        Value::Null => K_NULL,
        Value::Bool(_) => K_BOOL,
        Value::Number(_) => K_NUM,
        Value::String(_) => K_STR,
        Value::Array(_) => K_ARR,
        Value::Object(_) => K_OBJ,
    }
}

/// How a `uuid` logical type is carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UuidRepr {
    /// The spec's `string` form: the text itself.
    String,
    /// `fixed` of 16 bytes (the Avro 1.12 form).
    Fixed(String),
    /// `bytes` of 16 bytes (an older apache-avro form; kept for compatibility).
    Bytes,
}

pub(crate) struct Field {
    pub name: Box<str>,
    pub node: NodeId,
    /// The field's `default` as written in the schema (JSON), used to compile `missing`.
    pub default_json: Option<Value>,
    /// What to write when the JSON object lacks the field: the encoded default, or the null
    /// branch of a nullable union; `None` means a missing field is a mismatch.
    pub missing: Option<Box<[u8]>>,
}

pub(crate) struct Record {
    pub name: String,
    pub fields: Vec<Field>,
    /// Field names in byte order with their schema positions, to match a sorted JSON object's
    /// keys in one merge pass (see `Plan::sorted_maps`).
    pub sorted: Vec<(Box<str>, usize)>,
}

pub(crate) struct Enum {
    pub name: String,
    pub symbols: Vec<String>,
}

pub(crate) struct Branch {
    pub node: NodeId,
    /// Which JSON kinds this branch can take at all (see `K_*`).
    pub mask: u8,
    /// The names the Avro-JSON wrapped form `{"<name>": value}` may use for this branch.
    pub names: Vec<String>,
}

pub(crate) struct Union {
    pub branches: Vec<Branch>,
    /// Index of the `null` branch, if any.
    pub null_index: Option<usize>,
}

pub(crate) struct Decimal {
    pub precision: usize,
    pub scale: usize,
    /// `Some((name, size))` for decimal on `fixed`, `None` for decimal on `bytes`.
    pub fixed: Option<(String, usize)>,
}

pub(crate) enum Node {
    /// Reserved for a named type while its body is compiled; never seen once compiled.
    Pending,
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Record(Record),
    Enum(Enum),
    Fixed {
        name: String,
        size: usize,
    },
    Array(NodeId),
    Map(NodeId),
    Union(Union),
    Decimal(Decimal),
    Uuid(UuidRepr),
    Date,
    TimeMillis,
    TimeMicros,
    Timestamp {
        unit: Unit,
        local: bool,
    },
    /// `duration`: fixed(12) = months, days, millis as little-endian u32.
    Duration(String),
}

/// The compiled schema: an arena of nodes; `root` is where encoding starts.
pub(crate) struct Plan {
    pub nodes: Vec<Node>,
    pub root: NodeId,
    /// Whether serde_json objects iterate in key order (its default BTreeMap; not so with its
    /// `preserve_order` feature). When they do, a record's fields are matched to the object's
    /// keys in one merge pass instead of one map lookup per field.
    pub sorted_maps: bool,
}

impl Plan {
    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    /// One or two words naming a node's type, as used inside union listings.
    pub(crate) fn short(&self, id: NodeId) -> String {
        match self.node(id) {
            Node::Pending => "?".into(),
            Node::Null => "null".into(),
            Node::Boolean => "boolean".into(),
            Node::Int => "int".into(),
            Node::Long => "long".into(),
            Node::Float => "float".into(),
            Node::Double => "double".into(),
            Node::Bytes => "bytes".into(),
            Node::String => "string".into(),
            Node::Record(r) => r.name.clone(),
            Node::Enum(e) => format!("enum {}", short_name(&e.name)),
            Node::Fixed { name, .. } => format!("fixed {}", short_name(name)),
            Node::Array(item) => format!("array<{}>", self.short(*item)),
            Node::Map(item) => format!("map<{}>", self.short(*item)),
            Node::Union(u) => {
                let names: Vec<String> = u.branches.iter().map(|b| self.short(b.node)).collect();
                format!("union [{}]", names.join(", "))
            }
            Node::Decimal(d) => format!("decimal({},{})", d.precision, d.scale),
            Node::Uuid(_) => "uuid".into(),
            Node::Date => "date".into(),
            Node::TimeMillis => "time-millis".into(),
            Node::TimeMicros => "time-micros".into(),
            Node::Timestamp { unit, local } => timestamp_name(*unit, *local),
            Node::Duration(_) => "duration".into(),
        }
    }

    /// The `expected` text of a mismatch: the type and, where JSON could be written several
    /// ways, the forms this encoder accepts.
    pub(crate) fn describe(&self, id: NodeId) -> String {
        match self.node(id) {
            Node::Record(r) => format!("record {}", r.name),
            Node::Enum(e) => {
                let shown: Vec<&str> = e.symbols.iter().take(12).map(String::as_str).collect();
                let more = if e.symbols.len() > 12 { ", ..." } else { "" };
                format!(
                    "enum {} {{{}{more}}}",
                    short_name(&e.name),
                    shown.join(", ")
                )
            }
            Node::Fixed { name, size } => {
                format!(
                    "fixed {} (a string of exactly {size} bytes)",
                    short_name(name)
                )
            }
            Node::Int => "int (a JSON integer within 32 bits)".into(),
            Node::Long => "long (a JSON integer within 64 bits)".into(),
            Node::Float | Node::Double => format!("{} (a JSON number)", self.short(id)),
            Node::Bytes => "bytes (a JSON string)".into(),
            Node::Array(_) | Node::Map(_) | Node::Union(_) => self.short(id),
            Node::Decimal(d) => format!(
                "decimal({},{}) (a JSON number or decimal string)",
                d.precision, d.scale
            ),
            Node::Uuid(_) => "uuid (a string like 123e4567-e89b-12d3-a456-426614174000)".into(),
            Node::Date => "date (\"YYYY-MM-DD\" or days since 1970-01-01)".into(),
            Node::TimeMillis => "time-millis (\"HH:MM:SS[.fff]\" or milliseconds)".into(),
            Node::TimeMicros => "time-micros (\"HH:MM:SS[.ffffff]\" or microseconds)".into(),
            Node::Timestamp { unit, local } => format!(
                "{} ({} string or integer {})",
                timestamp_name(*unit, *local),
                if *local {
                    "\"YYYY-MM-DDTHH:MM:SS[.f]\""
                } else {
                    "an RFC 3339"
                },
                unit.suffix().replace("millis", "milliseconds")
            ),
            Node::Duration(_) => "duration (an object {months, days, millis})".into(),
            _ => self.short(id),
        }
    }
}

fn timestamp_name(unit: Unit, local: bool) -> String {
    format!(
        "{}timestamp-{}",
        if local { "local-" } else { "" },
        unit.suffix()
    )
}

pub(crate) fn short_name(full: &str) -> &str {
    full.rsplit('.').next().unwrap_or(full)
}

fn full(name: &Name) -> String {
    name.fullname(None)
}

const NO_BIG_DECIMAL: &str =
    "logical type big-decimal is not supported; use decimal with a precision and scale";

/// The largest decimal precision a schema may declare.
pub const MAX_DECIMAL_PRECISION: usize = 1000;

struct Compiler {
    nodes: Vec<Node>,
    names: HashMap<String, NodeId>,
}

impl Compiler {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    /// Reserves a node for a named type, so references to it (also from inside it) resolve.
    fn named(&mut self, name: &Name, aliases: &[String]) -> NodeId {
        let id = self.push(Node::Pending);
        self.names.insert(full(name), id);
        for a in aliases {
            self.names.insert(a.clone(), id);
        }
        id
    }

    fn compile(&mut self, s: &A) -> Result<NodeId, String> {
        let node = match s {
            A::Null => Node::Null,
            A::Boolean => Node::Boolean,
            A::Int => Node::Int,
            A::Long => Node::Long,
            A::Float => Node::Float,
            A::Double => Node::Double,
            A::Bytes => Node::Bytes,
            A::String => Node::String,
            A::Array(a) => Node::Array(self.compile(&a.items)?),
            A::Map(m) => Node::Map(self.compile(&m.types)?),
            A::Union(u) => {
                let mut branches = Vec::new();
                let mut null_index = None;
                for (i, v) in u.variants().iter().enumerate() {
                    let node = self.compile(v)?;
                    if matches!(self.nodes[node as usize], Node::Null) {
                        null_index = Some(i);
                    }
                    branches.push(Branch {
                        node,
                        mask: 0,
                        names: Vec::new(),
                    });
                }
                // Masks and names need the branch bodies, which a recursive reference may not
                // have yet; they are filled in by `finish_unions`.
                Node::Union(Union {
                    branches,
                    null_index,
                })
            }
            A::Record(r) => {
                let ns = r.name.namespace();
                let aliases = alias_names(r.aliases.as_deref(), ns);
                let id = self.named(&r.name, &aliases);
                let mut fields = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let node = self.compile(&f.schema)?;
                    fields.push(Field {
                        name: f.name.clone().into_boxed_str(),
                        node,
                        default_json: f.default.clone(),
                        missing: None,
                    });
                }
                let mut sorted: Vec<(Box<str>, usize)> = fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (f.name.clone(), i))
                    .collect();
                sorted.sort();
                self.nodes[id as usize] = Node::Record(Record {
                    name: full(&r.name),
                    fields,
                    sorted,
                });
                return Ok(id);
            }
            A::Enum(e) => {
                let aliases = alias_names(e.aliases.as_deref(), e.name.namespace());
                let id = self.named(&e.name, &aliases);
                self.nodes[id as usize] = Node::Enum(Enum {
                    name: full(&e.name),
                    symbols: e.symbols.clone(),
                });
                return Ok(id);
            }
            A::Fixed(f) => {
                let aliases = alias_names(f.aliases.as_deref(), f.name.namespace());
                let id = self.named(&f.name, &aliases);
                self.nodes[id as usize] = Node::Fixed {
                    name: full(&f.name),
                    size: f.size,
                };
                return Ok(id);
            }
            A::Decimal(d) => {
                // Encoding reads decimal text digit by digit into an integer of up to
                // `precision` digits; above this, one value could cost minutes of CPU.
                if d.precision > MAX_DECIMAL_PRECISION {
                    return Err(format!(
                        "decimal precision {} is above kgate's limit of {MAX_DECIMAL_PRECISION} digits",
                        d.precision
                    ));
                }
                let fixed = match &d.inner {
                    InnerDecimalSchema::Bytes => None,
                    InnerDecimalSchema::Fixed(f) => Some(f),
                };
                let node = Node::Decimal(Decimal {
                    precision: d.precision,
                    scale: d.scale,
                    fixed: fixed.map(|f| (full(&f.name), f.size)),
                });
                if let Some(f) = fixed {
                    let aliases = alias_names(f.aliases.as_deref(), f.name.namespace());
                    let id = self.named(&f.name, &aliases);
                    self.nodes[id as usize] = node;
                    return Ok(id);
                }
                node
            }
            A::BigDecimal => return Err(NO_BIG_DECIMAL.into()),
            A::Uuid(u) => match u {
                UuidSchema::String => Node::Uuid(UuidRepr::String),
                UuidSchema::Bytes => Node::Uuid(UuidRepr::Bytes),
                UuidSchema::Fixed(f) => {
                    let aliases = alias_names(f.aliases.as_deref(), f.name.namespace());
                    let id = self.named(&f.name, &aliases);
                    self.nodes[id as usize] = Node::Uuid(UuidRepr::Fixed(full(&f.name)));
                    return Ok(id);
                }
            },
            A::Date => Node::Date,
            A::TimeMillis => Node::TimeMillis,
            A::TimeMicros => Node::TimeMicros,
            A::TimestampMillis => ts(Unit::Millis, false),
            A::TimestampMicros => ts(Unit::Micros, false),
            A::TimestampNanos => ts(Unit::Nanos, false),
            A::LocalTimestampMillis => ts(Unit::Millis, true),
            A::LocalTimestampMicros => ts(Unit::Micros, true),
            A::LocalTimestampNanos => ts(Unit::Nanos, true),
            A::Duration(f) => {
                let aliases = alias_names(f.aliases.as_deref(), f.name.namespace());
                let id = self.named(&f.name, &aliases);
                self.nodes[id as usize] = Node::Duration(full(&f.name));
                return Ok(id);
            }
            A::Ref { name } => {
                let n = full(name);
                return self.names.get(&n).copied().ok_or_else(|| {
                    format!("the schema refers to type {n}, which it never defines")
                });
            }
        };
        Ok(self.push(node))
    }
}

fn ts(unit: Unit, local: bool) -> Node {
    Node::Timestamp { unit, local }
}

fn alias_names(aliases: Option<&[apache_avro::schema::Alias]>, ns: Option<&str>) -> Vec<String> {
    aliases
        .unwrap_or_default()
        .iter()
        .map(|a| a.fully_qualified_name(ns).fullname(None))
        .collect()
}

/// The JSON kinds a node can take (its union branch mask).
fn mask(plan: &Plan, id: NodeId) -> u8 {
    match plan.node(id) {
        Node::Pending | Node::Union(_) => 0,
        Node::Null => K_NULL,
        Node::Boolean => K_BOOL,
        Node::Int | Node::Long | Node::Float | Node::Double => K_NUM,
        Node::Bytes | Node::String | Node::Enum(_) | Node::Fixed { .. } | Node::Uuid(_) => K_STR,
        Node::Array(_) => K_ARR,
        Node::Map(_) | Node::Record(_) => K_OBJ,
        Node::Decimal(_)
        | Node::Date
        | Node::TimeMillis
        | Node::TimeMicros
        | Node::Timestamp { .. } => K_NUM | K_STR,
        Node::Duration(_) => K_OBJ,
    }
}

/// The names of the Avro-JSON wrapped union form for a branch: the type name (full and short
/// for named types), and for logical types also the underlying type and the logical name.
fn wrap_names(plan: &Plan, id: NodeId) -> Vec<String> {
    let named = |n: &str| vec![n.to_owned(), short_name(n).to_owned()];
    let mut names = match plan.node(id) {
        Node::Record(r) => named(&r.name),
        Node::Enum(e) => named(&e.name),
        Node::Fixed { name, .. } | Node::Duration(name) => named(name),
        Node::Uuid(UuidRepr::Fixed(name)) => named(name),
        Node::Uuid(UuidRepr::String) => vec!["string".into()],
        Node::Uuid(UuidRepr::Bytes) => vec!["bytes".into()],
        Node::Decimal(d) => match &d.fixed {
            Some((name, _)) => named(name),
            None => vec!["bytes".into()],
        },
        Node::Date | Node::TimeMillis => vec!["int".into()],
        Node::TimeMicros | Node::Timestamp { .. } => vec!["long".into()],
        Node::Array(_) => vec!["array".into()],
        Node::Map(_) => vec!["map".into()],
        _ => vec![],
    };
    let short = plan.short(id);
    if !short.contains([' ', '<', '(']) && !names.contains(&short) {
        names.push(short);
    }
    if let Node::Decimal(_) = plan.node(id) {
        names.push("decimal".into());
    }
    names.dedup();
    names
}

/// Compiles a parsed schema into a plan.
pub(crate) fn compile(schema: &A) -> Result<Plan, String> {
    let mut c = Compiler {
        nodes: Vec::new(),
        names: HashMap::new(),
    };
    let root = c.compile(schema)?;
    let mut probe = serde_json::Map::new();
    probe.insert("b".into(), Value::Null);
    probe.insert("a".into(), Value::Null);
    let mut plan = Plan {
        nodes: c.nodes,
        root,
        sorted_maps: probe.keys().next().is_some_and(|k| k == "a"),
    };
    // Union branch masks and wrapped names.
    for i in 0..plan.nodes.len() {
        if let Node::Union(u) = &plan.nodes[i] {
            let filled: Vec<(u8, Vec<String>)> = u
                .branches
                .iter()
                .map(|b| (mask(&plan, b.node), wrap_names(&plan, b.node)))
                .collect();
            if let Node::Union(u) = &mut plan.nodes[i] {
                for (b, (m, n)) in u.branches.iter_mut().zip(filled) {
                    b.mask = m;
                    b.names = n;
                }
            }
        }
    }
    Ok(plan)
}
