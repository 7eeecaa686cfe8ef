//! Zarr v3 node metadata: parsing what writers give us, and rendering `zarr.json`
//! deterministically (sorted keys, fixed formatting).

pub use crate::error::zarr::MetaError;
use crate::error::{Error, Result};
pub use crate::format::limits::MAX_NDIM;
use serde_json::{Map, Value};

const ARRAY_FIELDS: &[&str] = &[
    "zarr_format",
    "node_type",
    "shape",
    "data_type",
    "chunk_grid",
    "chunk_key_encoding",
    "fill_value",
    "codecs",
    "attributes",
    "storage_transformers",
    "dimension_names",
];
const ARRAY_REQUIRED: &[&str] = &[
    "shape",
    "data_type",
    "chunk_grid",
    "chunk_key_encoding",
    "fill_value",
    "codecs",
];
/// Array fields that fix what the chunk bytes mean and how they are named (with the
/// number of dimensions): an array whose `zarr.json` changes one of them is replaced by
/// a new incarnation, and its chunks go with the old one (spec/merge.md §3).
pub const LAYOUT_FIELDS: &[&str] = &[
    "zarr_format",
    "node_type",
    "data_type",
    "chunk_grid",
    "chunk_key_encoding",
    "codecs",
    "storage_transformers",
];
/// Array fields that are registers but may not be removed.
const REQUIRED_REGISTER_FIELDS: &[&str] = &["fill_value"];

/// Whether `name` is an array metadata field kept as a register of the incarnation
/// (spec/merge.md §4): every field but `shape`, `attributes` and [`LAYOUT_FIELDS`],
/// that is `fill_value`, `dimension_names` and extension fields.
pub fn is_field_register(name: &str) -> bool {
    name != "shape" && name != "attributes" && !LAYOUT_FIELDS.contains(&name)
}

/// Checks one value of a metadata field register: `value` is `None` for a removal.
/// `ndim` is the array's number of dimensions when known (a change names its array by
/// reference, so decoding alone cannot know it).
pub fn check_field(
    name: &str,
    value: Option<&Value>,
    ndim: Option<usize>,
) -> Result<(), MetaError> {
    if !is_field_register(name) {
        return Err(MetaError::NotAFieldRegister(name.to_string()));
    }
    let Some(value) = value else {
        if REQUIRED_REGISTER_FIELDS.contains(&name) {
            return Err(MetaError::RequiredField(name.to_string()));
        }
        return Ok(());
    };
    match name {
        "fill_value" => Ok(()),
        "dimension_names" => match value {
            Value::Null => Ok(()),
            Value::Array(a) if ndim.is_none_or(|n| n == a.len()) => Ok(()),
            _ => Err(MetaError::DimensionNames),
        },
        // Zarr v3: an extension field is allowed only if it says it may be ignored.
        _ if ARRAY_FIELDS.contains(&name) => Ok(()),
        _ if value.get("must_understand") == Some(&Value::Bool(false)) => Ok(()),
        _ => Err(MetaError::UnknownField(name.to_string())),
    }
}

const GROUP_FIELDS: &[&str] = &["zarr_format", "node_type", "attributes"];
/// Written by zarr-python into groups; crzarr never stores or emits it because
/// zarr-python trusts it over the real hierarchy.
const CONSOLIDATED: &str = "consolidated_metadata";

/// A node's metadata as written by a client, split the way crzarr stores it.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeDoc {
    /// A group.
    Group {
        /// Its attributes.
        attributes: Map<String, Value>,
    },
    /// An array.
    Array {
        /// The metadata without `attributes`, keys sorted.
        meta: ArrayMeta,
        /// Its attributes.
        attributes: Map<String, Value>,
    },
}

/// Array metadata without attributes: everything that fixes an incarnation's identity
/// except its shape, which is a mergeable register.
#[derive(Clone, Debug, PartialEq)]
pub struct ArrayMeta {
    doc: Map<String, Value>,
    shape: Vec<u64>,
}

impl ArrayMeta {
    /// Validates stored (canonical, attribute-free) array metadata.
    pub fn from_stored(doc: &Value) -> Result<ArrayMeta, MetaError> {
        let obj = doc.as_object().ok_or(MetaError::NotAnObject)?;
        if obj.contains_key("attributes") {
            return Err(MetaError::HoldsAttributes);
        }
        check_common(obj, "array", ARRAY_FIELDS)?;
        for f in ARRAY_REQUIRED {
            if !obj.contains_key(*f) {
                return Err(MetaError::MissingField(f));
            }
        }
        let shape = parse_shape(&obj["shape"])?;
        if let Some(names) = obj.get("dimension_names")
            && !names.is_null()
            && names.as_array().is_none_or(|a| a.len() != shape.len())
        {
            return Err(MetaError::DimensionNames);
        }
        if !obj["codecs"].is_array() {
            return Err(MetaError::Codecs);
        }
        Ok(ArrayMeta {
            doc: obj.clone(),
            shape,
        })
    }

    /// The shape it was created with.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Grid coordinates of a chunk key under a regular chunk grid with the `default`
    /// or `v2` key encoding; `None` for other grids, encodings or malformed keys.
    pub fn chunk_coords(&self, chunk_key: &str) -> Option<Vec<u64>> {
        let enc = self.doc.get("chunk_key_encoding")?;
        let name = enc.get("name")?.as_str()?;
        let conf_sep = enc
            .get("configuration")
            .and_then(|c| c.get("separator"))
            .and_then(Value::as_str);
        let coords = match name {
            "default" => {
                let sep = conf_sep.unwrap_or("/");
                let rest = chunk_key.strip_prefix('c')?;
                if rest.is_empty() {
                    return (self.ndim() == 0).then(Vec::new);
                }
                rest.strip_prefix(sep)?
                    .split(sep)
                    .map(|c| c.parse().ok())
                    .collect::<Option<Vec<u64>>>()?
            }
            "v2" => {
                let sep = conf_sep.unwrap_or(".");
                if chunk_key == "0" && self.ndim() == 0 {
                    return Some(Vec::new());
                }
                chunk_key
                    .split(sep)
                    .map(|c| c.parse().ok())
                    .collect::<Option<Vec<u64>>>()?
            }
            _ => return None,
        };
        (coords.len() == self.ndim()).then_some(coords)
    }

    /// Chunk shape of a regular chunk grid.
    pub fn chunk_shape(&self) -> Option<Vec<u64>> {
        let grid = self.doc.get("chunk_grid")?;
        if grid.get("name")?.as_str()? != "regular" {
            return None;
        }
        let shape = grid.get("configuration")?.get("chunk_shape")?.as_array()?;
        let shape: Option<Vec<u64>> = shape.iter().map(Value::as_u64).collect();
        shape.filter(|s| s.len() == self.ndim() && s.iter().all(|&c| c > 0))
    }

    /// Whether a chunk lies entirely outside `shape` (so a shrink to `shape` drops it).
    /// `false` when the grid or key is not understood.
    pub fn chunk_outside(&self, chunk_key: &str, shape: &[u64]) -> bool {
        match (self.chunk_coords(chunk_key), self.chunk_shape()) {
            (Some(coords), Some(cs)) => coords
                .iter()
                .zip(cs.iter().zip(shape))
                .any(|(&c, (&size, &extent))| c.saturating_mul(size) >= extent),
            _ => false,
        }
    }

    /// Canonical JSON text (sorted keys, compact), as stored in a create op.
    pub fn to_canonical(&self) -> String {
        let mut v = Value::Object(self.doc.clone());
        v.sort_all_objects();
        v.to_string()
    }

    /// Whether two documents give chunks the same meaning: the same number of
    /// dimensions and equal [`LAYOUT_FIELDS`]. A `zarr.json` write that keeps the
    /// layout updates the array's registers; one that changes it replaces the array.
    pub fn same_chunk_layout(&self, other: &ArrayMeta) -> bool {
        self.ndim() == other.ndim()
            && LAYOUT_FIELDS
                .iter()
                .all(|f| self.doc.get(*f) == other.doc.get(*f))
    }

    /// The fields kept as registers ([`is_field_register`]), by name.
    pub fn register_fields(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.doc
            .iter()
            .filter(|(k, _)| is_field_register(k))
            .map(|(k, v)| (k.as_str(), v))
    }

    /// This metadata with register fields replaced (`Some`) or removed (`None`); the
    /// values were checked with [`check_field`] against this array's dimensions.
    pub fn with_fields<'a>(
        &self,
        fields: impl IntoIterator<Item = (&'a str, Option<Value>)>,
    ) -> ArrayMeta {
        let mut doc = self.doc.clone();
        for (name, value) in fields {
            match value {
                Some(v) => doc.insert(name.to_string(), v),
                None => doc.remove(name),
            };
        }
        ArrayMeta {
            doc,
            shape: self.shape.clone(),
        }
    }

    /// Whether two metadata documents describe the same array apart from shape: the
    /// rule that makes concurrently created incarnations members of one node.
    pub fn same_apart_from_shape(&self, other: &ArrayMeta) -> bool {
        let strip = |m: &Map<String, Value>| {
            let mut m = m.clone();
            m.remove("shape");
            m
        };
        self.ndim() == other.ndim() && strip(&self.doc) == strip(&other.doc)
    }

    /// Renders `zarr.json` with a given shape and attributes.
    pub fn render(&self, shape: &[u64], attributes: Map<String, Value>) -> Vec<u8> {
        let mut doc = self.doc.clone();
        doc.insert("shape".into(), Value::from(shape.to_vec()));
        doc.insert("attributes".into(), Value::Object(attributes));
        render_doc(doc)
    }
}

/// Renders a group's `zarr.json`.
pub fn render_group(attributes: Map<String, Value>) -> Vec<u8> {
    let mut doc = Map::new();
    doc.insert("zarr_format".into(), Value::from(3));
    doc.insert("node_type".into(), Value::from("group"));
    doc.insert("attributes".into(), Value::Object(attributes));
    render_doc(doc)
}

fn render_doc(doc: Map<String, Value>) -> Vec<u8> {
    let mut v = Value::Object(doc);
    v.sort_all_objects();
    let mut out = serde_json::to_vec_pretty(&v).unwrap_or_default();
    out.push(b'\n');
    out
}

fn parse_shape(v: &Value) -> Result<Vec<u64>, MetaError> {
    let arr = v.as_array().ok_or(MetaError::ShapeNotArray)?;
    if arr.len() > MAX_NDIM {
        return Err(MetaError::TooManyDims);
    }
    arr.iter()
        .map(|d| d.as_u64().ok_or(MetaError::ShapeEntry))
        .collect()
}

fn check_common(
    obj: &Map<String, Value>,
    node_type: &'static str,
    known: &[&str],
) -> Result<(), MetaError> {
    if obj.get("zarr_format") != Some(&Value::from(3)) {
        return Err(MetaError::ZarrFormat);
    }
    if obj.get("node_type").and_then(Value::as_str) != Some(node_type) {
        return Err(MetaError::NodeType(node_type));
    }
    for (k, v) in obj {
        if known.contains(&k.as_str()) {
            continue;
        }
        // Zarr v3: an unknown field is allowed only if it says it may be ignored.
        let ignorable = v.get("must_understand") == Some(&Value::Bool(false));
        if !ignorable {
            return Err(MetaError::UnknownField(k.clone()));
        }
    }
    Ok(())
}

/// What to do with Zarr v2 metadata, which crzarr does not store.
pub const V2_ADVICE: &str = "this is Zarr v2 metadata (`zarr_format` 2), and crzarr stores Zarr v3: \
     convert the dataset to Zarr v3 first (zarr-python reads v2 and writes v3 with \
     `zarr_format=3`), then `crzarr import` it";

/// Parses a client's `zarr.json` for the node at `key`.
pub fn parse_node_doc(key: &str, bytes: &[u8]) -> Result<NodeDoc> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid_metadata(key, format!("not JSON: {e}")))?;
    let Value::Object(mut obj) = v else {
        return Err(Error::invalid_metadata(key, "not a JSON object"));
    };
    if obj.get("zarr_format") == Some(&Value::from(2)) {
        return Err(Error::invalid_metadata(key, V2_ADVICE));
    }
    let attributes = match obj.remove("attributes") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(Error::invalid_metadata(
                key,
                "`attributes` must be an object",
            ));
        }
    };
    match obj.get("node_type").and_then(Value::as_str) {
        Some("group") => {
            obj.remove(CONSOLIDATED);
            check_common(&obj, "group", GROUP_FIELDS)
                .map_err(|r| Error::invalid_metadata(key, r.to_string()))?;
            Ok(NodeDoc::Group { attributes })
        }
        Some("array") => {
            let meta = ArrayMeta::from_stored(&Value::Object(obj))
                .map_err(|r| Error::invalid_metadata(key, r.to_string()))?;
            Ok(NodeDoc::Array { meta, attributes })
        }
        _ => Err(Error::invalid_metadata(
            key,
            "`node_type` must be \"group\" or \"array\"",
        )),
    }
}

/// Canonical JSON text of a value (sorted keys, compact).
pub fn canonical_json(v: &Value) -> String {
    let mut v = v.clone();
    v.sort_all_objects();
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array_json() -> Value {
        serde_json::json!({
            "zarr_format": 3, "node_type": "array", "shape": [4, 4], "data_type": "int32",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 2]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "attributes": {"units": "m"}
        })
    }

    #[test]
    fn parses_and_renders_array() {
        let doc = parse_node_doc("a/zarr.json", array_json().to_string().as_bytes()).unwrap();
        let NodeDoc::Array { meta, attributes } = doc else {
            panic!("not an array")
        };
        assert_eq!(meta.shape(), &[4, 4]);
        assert_eq!(attributes["units"], "m");
        let out: Value = serde_json::from_slice(&meta.render(&[8, 4], attributes)).unwrap();
        let mut expect = array_json();
        expect["shape"] = serde_json::json!([8, 4]);
        assert_eq!(out, expect);
    }

    #[test]
    fn chunk_grid_coordinates() {
        let NodeDoc::Array { meta, .. } =
            parse_node_doc("a", array_json().to_string().as_bytes()).unwrap()
        else {
            panic!("not an array")
        };
        assert_eq!(meta.chunk_coords("c/1/0"), Some(vec![1, 0]));
        assert_eq!(meta.chunk_coords("c/1"), None);
        assert_eq!(meta.chunk_coords("c.1.0"), None);
        assert_eq!(meta.chunk_shape(), Some(vec![2, 2]));
        assert!(meta.chunk_outside("c/1/0", &[2, 4]));
        assert!(!meta.chunk_outside("c/1/0", &[3, 4]));
        let mut v2 = array_json();
        v2["chunk_key_encoding"] =
            serde_json::json!({"name": "v2", "configuration": {"separator": "."}});
        let NodeDoc::Array { meta, .. } = parse_node_doc("a", v2.to_string().as_bytes()).unwrap()
        else {
            panic!("not an array")
        };
        assert_eq!(meta.chunk_coords("3.4"), Some(vec![3, 4]));
    }

    #[test]
    fn refuses_invalid_metadata() {
        let mut missing = array_json();
        missing.as_object_mut().unwrap().remove("codecs");
        let mut unknown = array_json();
        unknown["bogus"] = serde_json::json!(1);
        let mut ignorable = array_json();
        ignorable["ext"] = serde_json::json!({"must_understand": false});
        for (v, ok) in [(missing, false), (unknown, false), (ignorable, true)] {
            assert_eq!(
                parse_node_doc("k", v.to_string().as_bytes()).is_ok(),
                ok,
                "{v}"
            );
        }
        assert!(parse_node_doc("k", b"[1]").is_err());
        assert!(parse_node_doc("k", br#"{"zarr_format":2,"node_type":"group"}"#).is_err());
        let g = parse_node_doc(
            "k",
            br#"{"zarr_format":3,"node_type":"group","consolidated_metadata":null}"#,
        )
        .unwrap();
        assert_eq!(
            g,
            NodeDoc::Group {
                attributes: Map::new()
            }
        );
    }
}
