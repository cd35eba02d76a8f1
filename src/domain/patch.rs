//! Parsing a PUT body into a [`SettingPatch`], with errors that name the field.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::error::Error;
use super::model::SettingPatch;
use super::types::{truncate, CmkText, EncryptionType};

/// Largest body the API accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A field of the body and how its value is read into a [`SettingPatch`].
pub struct BodyField {
    pub name: &'static str,
    pub kind: FieldKind,
    /// What the OpenAPI schema says of it.
    pub description: &'static str,
}

/// What a field's value must be (besides `null`, which keeps the stored value), with
/// where it goes in the patch.
#[derive(Clone, Copy)]
pub enum FieldKind {
    /// A string of [`MIN_LEN`](super::types::MIN_LEN)..=[`MAX_LEN`](super::types::MAX_LEN)
    /// characters.
    Text(fn(&mut SettingPatch, String)),
    /// `KMS` or `normal`, in any case ([`EncryptionType::parse`]).
    EncryptionType(fn(&mut SettingPatch, EncryptionType)),
    Boolean(fn(&mut SettingPatch, bool)),
}

/// The fields of an UpdateTenantRepoEncryptionSetting body: what the parser reads, and
/// what the OpenAPI document's schema of the body is built from.
pub const BODY_FIELDS: [BodyField; 5] = [
    BodyField {
        name: "tenant_id",
        kind: FieldKind::Text(|p, v| p.tenant_id = Some(v)),
        description: "Must equal the tenant in the path when present.",
    },
    BodyField {
        name: "encryption_type",
        kind: FieldKind::EncryptionType(|p, v| p.encryption_type = Some(v)),
        description: "`KMS` or `Normal`, case-insensitive.",
    },
    BodyField {
        name: "default_encryption_enabled",
        kind: FieldKind::Boolean(|p, v| p.default_encryption_enabled = Some(v)),
        description: "Needs encryption_type KMS when true.",
    },
    BodyField {
        name: "cmk_key_name",
        kind: FieldKind::Text(|p, v| p.cmk_key_name = Some(v)),
        description: "Must match the key's name in KMS when present; filled in from KMS otherwise.",
    },
    BodyField {
        name: "cmk_key_id",
        kind: FieldKind::Text(|p, v| p.cmk_key_id = Some(v)),
        description: "Id of a key in this tenant's KMS.",
    },
];

/// Parse the raw bytes of an UpdateTenantRepoEncryptionSetting body.
pub fn parse_setting_patch(body: &[u8]) -> Result<SettingPatch, Error> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Error::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequestBody(
            "request body is empty: send a JSON object".into(),
        ));
    }
    let top: Top = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            // Only a repeated field is a data error here (any value is accepted).
            Error::BadRequestBody(format!("request body {e}"))
        } else {
            Error::BadRequestBody(format!("request body is not valid JSON: {e}"))
        }
    })?;
    match top {
        Top::Object(map) => patch_from_map(map),
        Top::Other(value) => Err(Error::BadRequestBody(format!(
            "request body must be a JSON object, got {}",
            kind(&value)
        ))),
    }
}

/// A body's top-level value. An object's fields must be distinct: with a repeated field,
/// `serde_json` would keep the last silently, and a proxy or another parser that kept the
/// first would read a different request than this service.
enum Top {
    Object(Map<String, Value>),
    Other(Value),
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Top, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "repeats the field `{}`: send each field once",
                    truncate(&key, 64)
                )));
            }
            let value: Value = access.next_value()?;
            map.insert(key, value);
        }
        Ok(Top::Object(map))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Top, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = access.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Top::Other(Value::Array(items)))
    }

    fn visit_unit<E>(self) -> Result<Top, E> {
        Ok(Top::Other(Value::Null))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Top, E> {
        Ok(Top::Other(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Top, E> {
        Ok(Top::Other(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Top, E> {
        Ok(Top::Other(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Top, E> {
        Ok(Top::Other(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Top, E> {
        Ok(Top::Other(Value::String(v.to_owned())))
    }
}

fn patch_from_map(map: Map<String, Value>) -> Result<SettingPatch, Error> {
    let field = |key: &str| BODY_FIELDS.iter().find(|f| f.name == key);
    if let Some(unknown) = map.keys().find(|k| field(k).is_none()) {
        let names: Vec<&str> = BODY_FIELDS.iter().map(|f| f.name).collect();
        return Err(Error::BadRequestBody(format!(
            "unknown field `{}`: expected one of {}",
            truncate(unknown, 64),
            names.join(", ")
        )));
    }
    let mut patch = SettingPatch::default();
    for (key, value) in map {
        let Some(field) = field(&key) else { continue };
        if value.is_null() {
            continue; // null means "keep the stored value", like an absent field
        }
        let name = field.name;
        match field.kind {
            FieldKind::Text(set) => {
                let s = string(&value, name)?;
                set(&mut patch, CmkText::parse(name, s)?.into_string());
            }
            FieldKind::EncryptionType(set) => {
                set(&mut patch, EncryptionType::parse(string(&value, name)?)?);
            }
            FieldKind::Boolean(set) => {
                let b = value.as_bool().ok_or_else(|| {
                    Error::invalid(name, format!("must be a boolean, got {}", kind(&value)))
                })?;
                set(&mut patch, b);
            }
        }
    }
    Ok(patch)
}

fn string<'a>(value: &'a Value, field: &'static str) -> Result<&'a str, Error> {
    value
        .as_str()
        .ok_or_else(|| Error::invalid(field, format!("must be a string, got {}", kind(value))))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_msg(body: &str) -> String {
        match parse_setting_patch(body.as_bytes()) {
            Err(e) => e.to_string(),
            Ok(p) => panic!("expected an error for {body}, got {p:?}"),
        }
    }

    #[test]
    fn parses_all_fields() {
        let p = parse_setting_patch(
            br#"{"tenant_id":"t","encryption_type":"kms","default_encryption_enabled":true,
                 "cmk_key_name":"n","cmk_key_id":"k"}"#,
        )
        .expect("valid body");
        assert_eq!(p.encryption_type, Some(EncryptionType::Kms));
        assert_eq!(p.default_encryption_enabled, Some(true));
        assert_eq!(p.cmk_key_id.as_deref(), Some("k"));
        assert_eq!(p.cmk_key_name.as_deref(), Some("n"));
        assert_eq!(p.tenant_id.as_deref(), Some("t"));
    }

    #[test]
    fn a_repeated_field_is_refused_by_name() {
        let m = err_msg(r#"{"encryption_type":"KMS","encryption_type":"normal"}"#);
        assert!(m.contains("repeats the field `encryption_type`"), "{m}");
        // Even when the values agree, and however the key is escaped.
        let m = err_msg(r#"{"cmk_key_id":"k","cmk_key_\u0069d":"k"}"#);
        assert!(m.contains("repeats the field `cmk_key_id`"), "{m}");
        // Repeats inside a value are that value's business (and refused as the wrong type).
        assert!(!err_msg(r#"{"tenant_id":{"a":1,"a":2}}"#).contains("repeats"));
        assert!(err_msg("[1,2]").contains("got an array"));
        assert!(err_msg("12").contains("got a number"));
        assert!(err_msg("null").contains("got null"));
        assert!(err_msg(r#""x""#).contains("got a string"));
        assert!(err_msg("{").contains("not valid JSON"));
    }

    #[test]
    fn null_is_absent() {
        let p = parse_setting_patch(br#"{"encryption_type":null,"cmk_key_id":null}"#)
            .expect("nulls are allowed");
        assert_eq!(p, SettingPatch::default());
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(err_msg("{").contains("not valid JSON"));
        assert!(err_msg("[1]").contains("must be a JSON object, got an array"));
        assert!(err_msg("").contains("empty"));
        assert!(err_msg(r#"{"cmk_key_id":5}"#).contains("cmk_key_id"));
        assert!(err_msg(r#"{"default_encryption_enabled":"yes"}"#)
            .contains("default_encryption_enabled"));
        assert!(err_msg(r#"{"encryption_type":"AES"}"#).contains("encryption_type"));
        assert!(err_msg(r#"{"cmk_key_name":""}"#).contains("cmk_key_name"));
        assert!(err_msg(r#"{"bogus":1}"#).contains("unknown field `bogus`"));
        let long = format!(r#"{{"cmk_key_id":"{}"}}"#, "x".repeat(1001));
        assert!(err_msg(&long).contains("at most 1000"));
    }

    #[test]
    fn oversized_body_is_refused() {
        let big = format!(r#"{{"cmk_key_id":"{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        assert!(matches!(
            parse_setting_patch(big.as_bytes()),
            Err(Error::PayloadTooLarge { .. })
        ));
    }
}
