//! The doas method (Mitogen `mitogen.doas`): a context in another account through `doas -u
//! <user> -- <boot command>`, on the hybrid transport (doas asks on `/dev/tty`).

use std::ffi::OsString;

use mitogen_core::Result;
use serde::{Deserialize, Serialize};

use crate::command::{Bootstrapped, Launch};
use crate::connect::Deadline;
use crate::su::PromptTexts;
use crate::transport::Transport;
use mitogen_core::Secret;

/// The doas method's own options (the keywords of Mitogen's `Router.doas()`); the common ones
/// are in [`Options`](crate::Options). Serializable, so it works through `via=`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoasOptions {
    /// The account; default `root`.
    pub username: String,
    /// The password to type if doas asks.
    pub password: Option<Secret>,
    /// The doas program; default `doas`, found on `PATH`.
    pub doas_path: OsString,
    /// Text that shows doas asks for the password (case-insensitive); default `Password:`
    /// (OpenDoas prints `doas (user@host) password: `).
    pub password_prompt: String,
    /// Texts that show the password was refused (case-insensitive); default `doas:
    /// authentication failed` (as documented) and OpenBSD's `doas: Authorization failed`.
    pub incorrect_prompts: Vec<String>,
}

impl Default for DoasOptions {
    fn default() -> DoasOptions {
        DoasOptions::new("root")
    }
}

impl DoasOptions {
    /// Options for `username` with Mitogen's defaults.
    pub fn new(username: impl Into<String>) -> DoasOptions {
        DoasOptions {
            username: username.into(),
            password: None,
            doas_path: "doas".into(),
            password_prompt: "Password:".into(),
            incorrect_prompts: ["doas: authentication failed", "doas: authorization failed"].map(String::from).to_vec(),
        }
    }

    /// The context's name unless [`Options::name`](crate::Options::name) says otherwise: `doas.<user>`.
    pub fn default_name(&self) -> String {
        format!("doas.{}", self.username)
    }

    /// doas's argv up to `--`; the boot command follows.
    pub fn argv(&self) -> Vec<OsString> {
        vec![self.doas_path.clone(), "-u".into(), self.username.clone().into(), "--".into()]
    }
}

impl Bootstrapped for DoasOptions {
    /// On the hybrid transport (doas asks on `/dev/tty`); errors of kind
    /// [`Password`](mitogen_core::StreamErrorKind::Password): "doas password is incorrect",
    /// "doas password is required".
    fn launch(&self, _: Deadline) -> Result<Launch<'_>> {
        Ok(Launch {
            name: Some(self.default_name()),
            prompts: Box::new(|| {
                let texts = (&self.password_prompt, &self.incorrect_prompts);
                Box::new(PromptTexts::new(texts.0, texts.1, self.password.clone(), "doas"))
            }),
            compress: false, // a command on this machine
            ..Launch::new(self.argv(), Transport::Hybrid)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::Prompts;

    #[test]
    fn argv_name_and_recorded_texts() {
        let o = DoasOptions::new("mitogen-other");
        assert_eq!(o.argv(), ["doas", "-u", "mitogen-other", "--"].map(OsString::from));
        assert_eq!(o.default_name(), "doas.mitogen-other");
        let mut p = PromptTexts::new(&o.password_prompt, &o.incorrect_prompts, Some("pw".into()), "doas");
        // OpenDoas 6.8: a leading carriage return, then the prompt naming user and host.
        assert_eq!(p.partial("doas (mitogen-user@vm) password: ").unwrap(), Some(b"pw\n".to_vec()));
        let e = p.line("doas: Authentication failed").unwrap_err();
        assert!(e.to_string().contains("doas password is incorrect"), "{e}");
        let mut none = PromptTexts::new(&o.password_prompt, &o.incorrect_prompts, None, "doas");
        assert!(none.partial("doas (u@h) password: ").unwrap_err().to_string().contains("doas password is required"));
    }
}
