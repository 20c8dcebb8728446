//! The su method (Mitogen `mitogen.su`): a context in another account through `su <user> -c
//! <boot command>`, on a full PTY. su reads its password from stdin, so the prompt, the
//! password and then the protocol all share the one terminal (in raw mode, echo off).

use std::ffi::OsString;

use mitogen_core::Result;
use serde::{Deserialize, Serialize};

use crate::command::{Boot, Bootstrapped, Launch};
use crate::connect::Deadline;
use crate::prompt::{PasswordState, Prompts};
use crate::transport::Transport;
use mitogen_core::Secret;

/// The su method's own options (the keywords of Mitogen's `Router.su()`); the common ones are
/// in [`Options`](crate::Options). Serializable, so it works through `via=`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuOptions {
    /// The account; default `root`.
    pub username: String,
    /// The target account's password, typed at su's prompt.
    pub password: Option<Secret>,
    /// The su program; default `su`, found on `PATH`.
    pub su_path: OsString,
    /// Text that shows su asks for the password (case-insensitive); default `Password:`.
    pub password_prompt: String,
    /// Texts that show the password was refused (case-insensitive); default `su: sorry`, `su:
    /// authentication failure` (as documented), and the forms of CentOS 6 (`su: incorrect
    /// password`) and sudo-rs's su (`su: authentication failed`).
    pub incorrect_prompts: Vec<String>,
}

impl Default for SuOptions {
    fn default() -> SuOptions {
        SuOptions::new("root")
    }
}

impl SuOptions {
    /// Options for `username` with Mitogen's defaults.
    pub fn new(username: impl Into<String>) -> SuOptions {
        SuOptions {
            username: username.into(),
            password: None,
            su_path: "su".into(),
            password_prompt: "Password:".into(),
            incorrect_prompts: [
                "su: sorry",
                "su: authentication failure",
                "su: incorrect password",
                "su: authentication failed",
            ]
            .map(String::from)
            .to_vec(),
        }
    }

    /// The context's name unless [`Options::name`](crate::Options::name) says otherwise: `su.<user>`.
    pub fn default_name(&self) -> String {
        format!("su.{}", self.username)
    }

    /// su's argv up to `-c`; the boot command follows as one word.
    pub fn argv(&self) -> Vec<OsString> {
        vec![self.su_path.clone(), self.username.clone().into(), "-c".into()]
    }
}

impl Bootstrapped for SuOptions {
    /// On a full PTY (su asks on its terminal), the boot command as one word for `-c`; errors
    /// of kind [`Password`](mitogen_core::StreamErrorKind::Password): "su password is
    /// incorrect", "su password is required".
    fn launch(&self, _: Deadline) -> Result<Launch<'_>> {
        Ok(Launch {
            boot: Boot::Joined,
            name: Some(self.default_name()),
            prompts: Box::new(|| {
                let texts = (&self.password_prompt, &self.incorrect_prompts);
                Box::new(PromptTexts::new(texts.0, texts.1, self.password.clone(), "su"))
            }),
            compress: false, // a command on this machine
            ..Launch::new(self.argv(), Transport::Pty)
        })
    }
}

/// A method whose prompt and failures are configurable texts (su, doas): matched
/// case-insensitively anywhere in a line or in the text waiting after one (so a failure split
/// across two reads is still seen once it is whole).
pub(crate) struct PromptTexts {
    method: &'static str,
    prompt: String,
    incorrect: Vec<String>,
    password: PasswordState,
}

impl PromptTexts {
    pub(crate) fn new(
        prompt: &str,
        incorrect: &[String],
        password: Option<Secret>,
        method: &'static str,
    ) -> PromptTexts {
        PromptTexts {
            method,
            prompt: prompt.to_lowercase(),
            incorrect: incorrect.iter().map(|s| s.to_lowercase()).collect(),
            password: PasswordState::new(password, method),
        }
    }

    fn refused(&self, text: &str) -> bool {
        let lower = text.to_lowercase();
        self.incorrect.iter().any(|i| lower.contains(i.as_str()))
    }
}

impl Prompts for PromptTexts {
    fn line(&mut self, line: &str) -> Result<()> {
        match self.refused(line) {
            true => Err(self.password.refused()),
            false => Ok(()),
        }
    }

    fn partial(&mut self, text: &str) -> Result<Option<Vec<u8>>> {
        if self.refused(text) {
            return Err(self.password.refused());
        }
        if text.to_lowercase().contains(&self.prompt) {
            return self.password.prompt(self.method, text);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn su(password: Option<&str>) -> PromptTexts {
        let o = SuOptions::new("x");
        PromptTexts::new(&o.password_prompt, &o.incorrect_prompts, password.map(Secret::from), "su")
    }

    #[test]
    fn argv_and_name() {
        let o = SuOptions { su_path: "/bin/su".into(), ..SuOptions::new("bob") };
        assert_eq!(o.argv(), ["/bin/su", "bob", "-c"].map(OsString::from));
        assert_eq!(o.default_name(), "su.bob");
    }

    #[test]
    fn recorded_su_texts() {
        let mut p = su(Some("pw"));
        assert_eq!(p.partial("Password: ").unwrap(), Some(b"pw\n".to_vec()));
        // util-linux su, 3 s after a wrong password; and the same split across two reads.
        assert!(p.line("su: Authentication failure").unwrap_err().to_string().contains("su password is incorrect"));
        let mut p = su(Some("pw"));
        p.partial("Password: ").unwrap();
        assert_eq!(p.partial("su: ").unwrap(), None);
        assert!(p.partial("su: incorrect password").is_err());
        // sudo-rs's su wraps its prompt and retries.
        let mut p = su(Some("pw"));
        assert!(p.partial("[su: authenticate] Password: ").unwrap().is_some());
        assert!(p.line("su: Authentication failed, try again.").is_err());
        assert!(su(None).partial("Password: ").unwrap_err().to_string().contains("su password is required"));
        // A custom prompt and failure text.
        let mut custom = PromptTexts::new("Kennwort:", &["falsch".into()], Some("pw".into()), "su");
        assert!(custom.partial("KENNWORT: ").unwrap().is_some());
        assert!(custom.line("Das Kennwort ist FALSCH").is_err());
    }
}
