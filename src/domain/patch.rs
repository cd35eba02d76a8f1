//! Parsing a PUT body into a [`SettingPatch`], with errors that name the field.

use serde_json::{Map, Value};

use super::error::Error;
use super::model::SettingPatch;
use super::types::{truncate, CmkText, EncryptionType};

/// Largest body the API accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

const FIELDS: [&str; 5] = [
    "tenant_id",
    "encryption_type",
    "default_encryption_enabled",
    "cmk_key_name",
    "cmk_key_id",
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
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequestBody(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Error::BadRequestBody(format!(
            "request body must be a JSON object, got {}",
            kind(&value)
        )));
    };
    patch_from_map(map)
}

fn patch_from_map(map: Map<String, Value>) -> Result<SettingPatch, Error> {
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(Error::BadRequestBody(format!(
            "unknown field `{}`: expected one of {}",
            truncate(unknown, 64),
            FIELDS.join(", ")
        )));
    }
    let mut patch = SettingPatch::default();
    for (key, value) in map {
        if value.is_null() {
            continue; // null means "keep the stored value", like an absent field
        }
        match key.as_str() {
            "tenant_id" => {
                let s = string(&value, "tenant_id")?;
                CmkText::parse("tenant_id", s)?;
                patch.tenant_id = Some(s.to_owned());
            }
            "encryption_type" => {
                patch.encryption_type =
                    Some(EncryptionType::parse(string(&value, "encryption_type")?)?);
            }
            "default_encryption_enabled" => {
                patch.default_encryption_enabled = Some(value.as_bool().ok_or_else(|| {
                    Error::invalid(
                        "default_encryption_enabled",
                        format!("must be a boolean, got {}", kind(&value)),
                    )
                })?);
            }
            "cmk_key_name" => {
                let s = string(&value, "cmk_key_name")?;
                patch.cmk_key_name = Some(CmkText::parse("cmk_key_name", s)?.into_string());
            }
            "cmk_key_id" => {
                let s = string(&value, "cmk_key_id")?;
                patch.cmk_key_id = Some(CmkText::parse("cmk_key_id", s)?.into_string());
            }
            _ => {}
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
