//! Parsing request bodies and queries into validated commands. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::error::ApiError;
use crate::registry::types::{parse_port, parse_server_ip, quoted};
use crate::registry::{Command, FieldError, Key, ServiceName};

/// The fields of the original phone-home body, as strings.
pub type Fields = BTreeMap<String, String>;

/// The body formats the original webhook accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Form,
}

/// Picks the body format from the Content-Type header.
pub fn body_format(content_type: Option<&str>) -> Result<BodyFormat, ApiError> {
    let Some(ct) = content_type else {
        return Err(ApiError::UnsupportedMediaType("(none)".into()));
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/x-www-form-urlencoded" => Ok(BodyFormat::Form),
        _ => Err(ApiError::UnsupportedMediaType(quoted(ct))),
    }
}

/// Reads a JSON object or a form into field → string. JSON numbers and
/// booleans are accepted as their text; anything nested is refused.
pub fn parse_fields(format: BodyFormat, body: &[u8]) -> Result<Fields, ApiError> {
    let mut fields = Fields::new();
    match format {
        BodyFormat::Json => {
            for (k, v) in json_object(body)? {
                let text = match v {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => String::new(),
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "field {} must be a string",
                            quoted(&k)
                        )));
                    }
                };
                fields.insert(k, text);
            }
        }
        BodyFormat::Form => {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|e| ApiError::BadRequest(format!("body is not a valid form: {e}")))?;
            for (k, v) in pairs {
                if fields.contains_key(&k) {
                    return Err(ApiError::BadRequest(format!(
                        "field {} given twice",
                        quoted(&k)
                    )));
                }
                fields.insert(k, v);
            }
        }
    }
    Ok(fields)
}

/// A JSON object's members in order, refusing a key given twice (serde_json
/// alone keeps the last, so `{"action":"add","action":"delete"}` would mean
/// whatever the last parser in the chain thinks).
pub fn json_object(body: &[u8]) -> Result<Vec<(String, Value)>, ApiError> {
    use serde::de::{Deserializer as _, Error as _, MapAccess, Visitor};

    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, Value)> = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, Value>()? {
                if out.iter().any(|(seen, _)| *seen == k) {
                    return Err(A::Error::custom(format!(
                        "field {} given twice",
                        quoted(&k)
                    )));
                }
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let members = de
        .deserialize_map(Members)
        .and_then(|m| de.end().map(|()| m));
    members.map_err(|e| {
        if e.is_data() {
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg);
            if msg.starts_with("invalid type") {
                ApiError::BadRequest("body must be a JSON object".into())
            } else {
                ApiError::BadRequest(msg.to_owned())
            }
        } else {
            ApiError::BadRequest(format!("body is not valid JSON: {e}"))
        }
    })
}

const HOOK_FIELDS: [&str; 7] = [
    "name",
    "frontend-port",
    "backend-port",
    "dst-ip",
    "action",
    "send-proxy",
    "ttl",
];

fn required<'a>(fields: &'a Fields, name: &'static str) -> Result<&'a str, ApiError> {
    fields
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| FieldError::new(name, "is required").into())
}

/// `send-proxy`: the original passed "" or "send-proxy"; booleans are accepted too.
pub fn parse_send_proxy(field: &'static str, raw: &str) -> Result<bool, FieldError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "false" | "0" | "no" | "off" => Ok(false),
        "send-proxy" | "true" | "1" | "yes" | "on" => Ok(true),
        _ => Err(FieldError::new(
            field,
            format!("must be \"send-proxy\" or empty, got {}", quoted(raw)),
        )),
    }
}

/// A lease length in whole seconds.
pub fn parse_ttl(field: &'static str, raw: &str) -> Result<Duration, FieldError> {
    if raw.is_empty() || raw.len() > 9 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FieldError::new(
            field,
            format!("must be a whole number of seconds, got {}", quoted(raw)),
        ));
    }
    Ok(Duration::from_secs(raw.parse().unwrap_or(u64::MAX)))
}

/// The original phone-home body → a command.
pub fn hook_command(fields: &Fields) -> Result<Command, ApiError> {
    if let Some(unknown) = fields.keys().find(|k| !HOOK_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "unknown field {}; expected {}",
            quoted(unknown),
            HOOK_FIELDS.join(", ")
        )));
    }
    let name = ServiceName::parse_field("name", required(fields, "name")?)?;
    let frontend = parse_port("frontend-port", required(fields, "frontend-port")?)?;
    let port = parse_port("backend-port", required(fields, "backend-port")?)?;
    let ip = parse_server_ip("dst-ip", required(fields, "dst-ip")?)?;
    let key = Key {
        frontend,
        server: (ip, port).into(),
    };
    match required(fields, "action")? {
        "add" => Ok(Command::Register {
            key,
            name,
            send_proxy: fields
                .get("send-proxy")
                .map(|v| parse_send_proxy("send-proxy", v))
                .transpose()?
                .unwrap_or(false),
            ttl: fields.get("ttl").map(|v| parse_ttl("ttl", v)).transpose()?,
        }),
        "delete" => Ok(Command::Delete { key, name }),
        other => Err(FieldError::new(
            "action",
            format!("must be \"add\" or \"delete\", got {}", quoted(other)),
        )
        .into()),
    }
}

/// Body of `PUT /v1/frontends/{frontend_port}/servers/{ip}/{port}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    name: ServiceName,
    #[serde(default)]
    send_proxy: bool,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// The typed registration body → a command for `key`. A key given twice is
/// refused (serde's derive says "duplicate field").
pub fn register_command(key: Key, body: &[u8]) -> Result<Command, ApiError> {
    let b: RegisterBody =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("bad body: {e}")))?;
    Ok(Command::Register {
        key,
        name: b.name,
        send_proxy: b.send_proxy,
        ttl: b.ttl_seconds.map(Duration::from_secs),
    })
}

/// What `?wait=applied&timeout=S` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaitQuery {
    pub wait: Option<Duration>,
}

/// Parses the query of a write: only `wait` and `timeout` are known.
pub fn wait_query(raw: Option<&str>, max_wait: Duration) -> Result<WaitQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?;
    let mut wait = false;
    let mut timeout = None;
    for (k, v) in pairs {
        match k.as_str() {
            "wait" if v == "applied" => wait = true,
            "wait" => {
                return Err(FieldError::new(
                    "wait",
                    format!("must be \"applied\", got {}", quoted(&v)),
                )
                .into());
            }
            "timeout" => {
                let t = parse_ttl("timeout", &v)?;
                if t.is_zero() || t > max_wait {
                    return Err(FieldError::new(
                        "timeout",
                        format!("must be from 1 to {} seconds", max_wait.as_secs()),
                    )
                    .into());
                }
                timeout = Some(t);
            }
            "name" => {}
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {}; expected wait, timeout",
                    quoted(other)
                )));
            }
        }
    }
    Ok(WaitQuery {
        wait: wait.then(|| timeout.unwrap_or(Duration::from_secs(10).min(max_wait))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str) -> Result<Command, ApiError> {
        hook_command(&parse_fields(BodyFormat::Json, body.as_bytes())?)
    }

    #[test]
    fn the_original_body_parses() {
        let c = json(r#"{"dst-ip":"203.0.113.7","frontend-port":"443","backend-port":"30443","action":"add","name":"traefik","send-proxy":""}"#).unwrap();
        assert_eq!(
            c,
            Command::Register {
                key: Key {
                    frontend: 443,
                    server: "203.0.113.7:30443".parse().unwrap()
                },
                name: "traefik".parse().unwrap(),
                send_proxy: false,
                ttl: None
            }
        );
        let form = parse_fields(
            BodyFormat::Form,
            b"name=mqtt&frontend-port=8443&backend-port=30843&dst-ip=2001%3Adb8%3A%3A7&action=delete",
        )
        .unwrap();
        assert!(matches!(
            hook_command(&form).unwrap(),
            Command::Delete { .. }
        ));
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        for (body, needle) in [
            ("{}", "name: is required"),
            ("[]", "JSON object"),
            ("{", "not valid JSON"),
            (
                r#"{"name":"a","frontend-port":"443","backend-port":"1","dst-ip":"203.0.113.7","action":"add","x":"1"}"#,
                "unknown field \"x\"",
            ),
            (r#"{"name":{"a":1}}"#, "must be a string"),
            (
                r#"{"name":"a","frontend-port":"443","backend-port":"1","dst-ip":"203.0.113.7","action":"add","send-proxy":"maybe"}"#,
                "send-proxy",
            ),
            (
                r#"{"name":"a","frontend-port":"443","backend-port":"1","dst-ip":"203.0.113.7","action":"add","ttl":"-5"}"#,
                "ttl",
            ),
        ] {
            let err = json(body).unwrap_err().to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
        let dup = parse_fields(BodyFormat::Form, b"name=a&name=b").unwrap_err();
        assert!(dup.to_string().contains("twice"));
        let dup = json(r#"{"action":"add","name":"a","action":"delete"}"#).unwrap_err();
        assert_eq!(dup.to_string(), "field \"action\" given twice");
        let trailing = json(r#"{"name":"a"} {}"#).unwrap_err();
        assert!(
            trailing.to_string().contains("not valid JSON"),
            "{trailing}"
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            body_format(Some("application/json")).unwrap(),
            BodyFormat::Json
        );
        assert_eq!(
            body_format(Some("Application/JSON; charset=utf-8")).unwrap(),
            BodyFormat::Json
        );
        assert_eq!(
            body_format(Some("application/x-www-form-urlencoded")).unwrap(),
            BodyFormat::Form
        );
        assert!(body_format(Some("text/plain")).is_err());
        assert!(body_format(None).is_err());
    }

    #[test]
    fn wait_queries() {
        let max = Duration::from_secs(30);
        assert_eq!(wait_query(None, max).unwrap().wait, None);
        assert_eq!(
            wait_query(Some("wait=applied"), max).unwrap().wait,
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            wait_query(Some("wait=applied&timeout=3"), max)
                .unwrap()
                .wait,
            Some(Duration::from_secs(3))
        );
        for bad in [
            "wait=yes",
            "timeout=0&wait=applied",
            "wait=applied&timeout=31",
            "foo=bar",
        ] {
            assert!(wait_query(Some(bad), max).is_err(), "{bad}");
        }
    }
}
