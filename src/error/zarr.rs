//! The rules a Zarr key or node metadata document breaks (spec/format.md §7).

/// A rule of Zarr keys and node paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRule {
    /// A segment is empty (`a//b`, a trailing `/`).
    #[error("empty path segment")]
    EmptySegment,
    /// A segment is `.` or `..`.
    #[error("`.` and `..` segments are not allowed")]
    DotSegment,
    /// A segment is `.crdt`, in any case.
    #[error("`.crdt` is reserved for crzarr")]
    Reserved,
    /// A segment holds a control character or `\`.
    #[error("control characters and `\\` are not allowed")]
    Control,
    /// Longer than [`MAX_KEY_LEN`](crate::format::limits::MAX_KEY_LEN).
    #[error("longer than 1024 bytes")]
    TooLong,
    /// Starts with `/`.
    #[error("absolute keys are not allowed")]
    Absolute,
    /// The empty key.
    #[error("empty key")]
    Empty,
    /// A node name starts with `__`.
    #[error("node names starting with `__` are reserved by Zarr")]
    ZarrReserved,
    /// A node name is `zarr.json`.
    #[error("`zarr.json` is not a node name")]
    MetaNode,
    /// A chunk key segment is `zarr.json`.
    #[error("`zarr.json` is not a chunk key segment")]
    MetaChunk,
    /// An object key segment is `zarr.json`.
    #[error("`zarr.json` is node metadata, not an object key segment")]
    MetaObject,
}

/// A key or node path refused by the checks of this module: the key and the rule it
/// breaks. As an [`Error`](crate::Error) it is [`Error::InvalidKey`](crate::Error::InvalidKey).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid key {key:?}: {rule}")]
pub struct KeyError {
    /// The key as given.
    pub key: String,
    /// The rule it breaks.
    pub rule: KeyRule,
}

/// A rule of Zarr v3 node metadata that a document breaks. As an [`Error`](crate::Error) it is the
/// reason of an [`Error::InvalidMetadata`](crate::Error::InvalidMetadata); in a change or snapshot it makes the object
/// corrupt.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// Array metadata that is not a JSON object.
    #[error("array metadata is not a JSON object")]
    NotAnObject,
    /// Stored array metadata holding `attributes` (they are registers of their own).
    #[error("stored array metadata must not hold attributes")]
    HoldsAttributes,
    /// `zarr_format` is not 3.
    #[error("`zarr_format` must be 3")]
    ZarrFormat,
    /// `node_type` is not the one expected (`"array"` or `"group"`).
    #[error("`node_type` must be \"{0}\"")]
    NodeType(&'static str),
    /// A field Zarr v3 does not define, without `"must_understand": false`.
    #[error("unknown field `{0}` without `\"must_understand\": false`")]
    UnknownField(String),
    /// A required array field is absent.
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// `shape` is not an array.
    #[error("`shape` must be an array")]
    ShapeNotArray,
    /// More than [`MAX_NDIM`](crate::format::limits::MAX_NDIM) dimensions.
    #[error("too many dimensions")]
    TooManyDims,
    /// A `shape` entry that is not a non-negative integer.
    #[error("`shape` entries must be non-negative integers")]
    ShapeEntry,
    /// `dimension_names` does not list one entry per dimension.
    #[error("`dimension_names` must list one entry per dimension")]
    DimensionNames,
    /// `codecs` is not an array.
    #[error("`codecs` must be an array")]
    Codecs,
    /// A metadata field edit names a field that is not a register: `shape` (a
    /// dimension register of its own), `attributes`, or a field that fixes the
    /// chunk layout (changing one replaces the array).
    #[error("`{0}` is not an editable array metadata field")]
    NotAFieldRegister(String),
    /// A metadata field edit removes a field Zarr v3 requires (`fill_value`).
    #[error("`{0}` is required and cannot be removed")]
    RequiredField(String),
    /// A metadata field's value is not JSON text (the parser's message).
    #[error("field value is not JSON: {0}")]
    FieldJson(String),
}
