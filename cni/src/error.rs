//! The CNI error result and the codes weir uses.
//!
//! Codes 1–11 and 50 are the spec's well-known codes; weir's own codes start
//! at 100, one per [`weir_agent_api::ErrorCode`], so a runtime log shows
//! *which* side refused.

use serde::Serialize;
use weir_agent_api::{ClientError, ErrorCode};

/// A CNI error code (spec section "Error").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: the requested `cniVersion` is not one we speak.
    IncompatibleVersion,
    /// 2: a field we do not support was set.
    UnsupportedField,
    /// 3: the container (its network namespace) does not exist.
    UnknownContainer,
    /// 4: a `CNI_*` environment variable is missing or malformed.
    InvalidEnv,
    /// 5: a kernel or socket operation failed.
    Io,
    /// 6: stdin is not JSON.
    Decode,
    /// 7: the network configuration is invalid.
    InvalidConfig,
    /// 11: transient; the runtime should retry (the agent is unreachable).
    TryAgainLater,
    /// 50: the plugin cannot serve ADDs right now (STATUS).
    NotAvailable,
    /// 100..: the agent refused; see [`Code::from_agent`].
    Agent(ErrorCode),
}

impl Code {
    pub fn number(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::UnsupportedField => 2,
            Code::UnknownContainer => 3,
            Code::InvalidEnv => 4,
            Code::Io => 5,
            Code::Decode => 6,
            Code::InvalidConfig => 7,
            Code::TryAgainLater => 11,
            Code::NotAvailable => 50,
            Code::Agent(ErrorCode::IpamExhausted) => 100,
            Code::Agent(ErrorCode::NotFound) => 101,
            Code::Agent(ErrorCode::Datapath) => 102,
            Code::Agent(ErrorCode::BadRequest) => 103,
            Code::Agent(ErrorCode::Internal) => 104,
        }
    }
}

/// A failed CNI command: what goes to stdout as the spec's error object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (code {}){}", code.number(), if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: Code,
    /// Short, stable description.
    pub msg: String,
    /// Longer context (the underlying error chain); may be empty.
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error object printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code.number(),
            msg: &self.msg,
            details: &self.details,
        })
        .expect("serializing plain strings and integers cannot fail")
    }

    /// Map a failed agent call. `unreachable` is the code for "the agent is not
    /// there" (11 for ADD/DEL/CHECK/GC, 50 for STATUS).
    pub fn from_agent(what: &str, err: &ClientError, unreachable: Code) -> Self {
        let code = match err {
            ClientError::Unreachable { .. } | ClientError::Io { .. } => unreachable,
            ClientError::Decode(_) => Code::Io,
            ClientError::Api(api) => Code::Agent(api.code),
        };
        let msg = match err {
            ClientError::Unreachable { .. } => format!("{what}: weir agent unreachable"),
            ClientError::Io { .. } => format!("{what}: talking to the weir agent failed"),
            ClientError::Decode(_) => format!("{what}: malformed reply from the weir agent"),
            ClientError::Api(_) => format!("{what}: weir agent refused"),
        };
        CniError::new(code, msg).with_details(weir_error::report(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_agent_api::ApiError;

    #[test]
    fn error_json_has_spec_shape() {
        let e = CniError::new(Code::InvalidConfig, "bad mtu").with_details("mtu 10 < 68");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.1.0","code":7,"msg":"bad mtu","details":"mtu 10 < 68"})
        );
        let bare = CniError::new(Code::Io, "x").to_json("1.0.0");
        assert_eq!(bare, r#"{"cniVersion":"1.0.0","code":5,"msg":"x"}"#);
    }

    #[test]
    fn agent_errors_map_to_codes() {
        let unreachable = ClientError::Unreachable {
            path: "/run/weir/agent.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            CniError::from_agent("add", &unreachable, Code::TryAgainLater)
                .code
                .number(),
            11
        );
        assert_eq!(
            CniError::from_agent("status", &unreachable, Code::NotAvailable)
                .code
                .number(),
            50
        );
        let timeout = ClientError::Io {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::TimedOut),
        };
        assert_eq!(
            CniError::from_agent("add", &timeout, Code::TryAgainLater).code.number(),
            11
        );
        for (code, n) in [
            (ErrorCode::IpamExhausted, 100),
            (ErrorCode::NotFound, 101),
            (ErrorCode::Datapath, 102),
            (ErrorCode::BadRequest, 103),
            (ErrorCode::Internal, 104),
        ] {
            let e = ClientError::Api(ApiError::new(code, "m"));
            let cni = CniError::from_agent("add", &e, Code::TryAgainLater);
            assert_eq!(cni.code.number(), n);
            assert!(cni.details.contains('m'));
        }
    }
}
