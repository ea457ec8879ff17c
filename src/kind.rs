//! The provider kinds, and what is fixed per kind: one table row each ([`ProviderKind::facts`]),
//! holding the kind's YAML name, its doc, its default `base_url` and how it is called (one
//! image per call, polled). Kept below both `config` (which reads the rows to check and default
//! a provider entry) and `providers` (whose `adapter_for` maps each kind to its adapter), so
//! that neither imports the other for them.

use std::fmt;

/// The plain settings of a provider entry that its kind's default `base_url` depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placement<'a> {
    /// The AWS region (`region`, Bedrock).
    pub region: Option<&'a str>,
    /// The Google Cloud location (`location`, Vertex).
    pub location: Option<&'a str>,
}

/// What is fixed for one provider kind: its row in the table of [`ProviderKind`].
#[derive(Debug, Clone, Copy)]
pub struct KindFacts {
    /// The YAML name (`kind: NAME`).
    pub name: &'static str,
    /// The provider's URL when the entry gives no `base_url`, from the entry's placement;
    /// `None`: `base_url` is required for this kind.
    pub default_base_url: fn(Placement<'_>) -> Option<String>,
    /// Its models make one image per call, so `n > 1` is served by n calls (and the entry
    /// takes `repeat_concurrency`).
    pub repeats_calls: bool,
    /// It answers with a job that is polled (and the entry takes `poll_interval_ms` and
    /// `poll_timeout_ms`).
    pub polled: bool,
}

macro_rules! provider_kinds {
    ($($(#[$doc:meta])* $variant:ident => $facts:expr,)+) => {
        /// The API dialect a provider speaks, written as `kind:` in YAML.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProviderKind {
            $($(#[$doc])* $variant,)+
        }

        impl ProviderKind {
            /// Every kind, in the order they are documented.
            pub const ALL: &'static [ProviderKind] = &[$(ProviderKind::$variant),+];

            /// This kind's row: what is fixed for it.
            pub fn facts(self) -> &'static KindFacts {
                match self {
                    $(ProviderKind::$variant => {
                        const FACTS: KindFacts = $facts;
                        &FACTS
                    })+
                }
            }
        }
    };
}

// A new kind is one row here (plus its adapter in `providers::adapter_for`).
provider_kinds! {
    /// An OpenAI-compatible HTTP API (`openai`).
    OpenAi => KindFacts {
        name: "openai",
        default_base_url: |_| Some("https://api.openai.com/v1".into()),
        repeats_calls: false,
        polled: false,
    },
    /// Azure OpenAI: deployments API or the `/openai/v1` API (`azure`).
    Azure => KindFacts {
        name: "azure",
        default_base_url: |_| None,
        repeats_calls: false,
        polled: false,
    },
    /// The Gemini Developer API: `generateContent`, and `:predict` for Imagen (`gemini`).
    Gemini => KindFacts {
        name: "gemini",
        default_base_url: |_| Some("https://generativelanguage.googleapis.com/v1beta".into()),
        repeats_calls: false,
        polled: false,
    },
    /// Vertex AI: Imagen `:predict` and Gemini `generateContent` (`vertex`).
    Vertex => KindFacts {
        name: "vertex",
        default_base_url: |p| match p.location {
            Some("global") | None => Some("https://aiplatform.googleapis.com/v1".into()),
            Some(region) => Some(format!("https://{region}-aiplatform.googleapis.com/v1")),
        },
        repeats_calls: false,
        polled: false,
    },
    /// Amazon Bedrock `InvokeModel`: Titan Image Generator v2, Nova Canvas, Stability (`bedrock`).
    Bedrock => KindFacts {
        name: "bedrock",
        default_base_url: |p| {
            let region = p.region.unwrap_or("us-east-1");
            Some(format!("https://bedrock-runtime.{region}.amazonaws.com"))
        },
        repeats_calls: true,
        polled: false,
    },
    /// Stability AI's REST API, v2beta edit endpoints (`stability`).
    Stability => KindFacts {
        name: "stability",
        default_base_url: |_| Some("https://api.stability.ai".into()),
        repeats_calls: true,
        polled: false,
    },
    /// Black Forest Labs' API: FLUX Kontext / Fill, submit then poll (`bfl`).
    Bfl => KindFacts {
        name: "bfl",
        default_base_url: |_| Some("https://api.bfl.ai/v1".into()),
        repeats_calls: true,
        polled: true,
    },
    /// Fireworks' FLUX Kontext workflows, submit then poll (`fireworks`).
    Fireworks => KindFacts {
        name: "fireworks",
        default_base_url: |_| Some("https://api.fireworks.ai/inference/v1".into()),
        repeats_calls: true,
        polled: true,
    },
    /// Replicate predictions, `Prefer: wait` then poll (`replicate`).
    Replicate => KindFacts {
        name: "replicate",
        default_base_url: |_| Some("https://api.replicate.com/v1".into()),
        repeats_calls: false,
        polled: true,
    },
    /// The Hugging Face inference router, image-to-image (`huggingface`): hf-inference answers
    /// at once, fal-ai's queue is polled.
    HuggingFace => KindFacts {
        name: "huggingface",
        default_base_url: |_| Some("https://router.huggingface.co".into()),
        repeats_calls: false,
        polled: true,
    },
    /// xAI image edits, JSON with data URLs (`xai`).
    Xai => KindFacts {
        name: "xai",
        default_base_url: |_| Some("https://api.x.ai/v1".into()),
        repeats_calls: false,
        polled: false,
    },
}

impl ProviderKind {
    /// The YAML name of this kind.
    pub fn as_str(&self) -> &'static str {
        self.facts().name
    }

    /// The kind with YAML name `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == name)
    }

    /// The provider's URL when its entry gives no `base_url` (`None`: required for this kind).
    pub fn default_base_url(self, placement: Placement<'_>) -> Option<String> {
        (self.facts().default_base_url)(placement)
    }

    /// True when `n > 1` is served by n calls (see [`KindFacts::repeats_calls`]).
    pub fn repeats_calls(self) -> bool {
        self.facts().repeats_calls
    }

    /// True when the provider answers with a job that is polled (see [`KindFacts::polled`]).
    pub fn is_polled(self) -> bool {
        self.facts().polled
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lowercase_and_round_trip() {
        for (i, kind) in ProviderKind::ALL.iter().enumerate() {
            assert_eq!(ProviderKind::from_name(kind.as_str()), Some(*kind));
            assert!(kind.as_str().chars().all(|c| c.is_ascii_lowercase()), "{kind}");
            assert!(
                ProviderKind::ALL[..i].iter().all(|k| k.as_str() != kind.as_str()),
                "{kind}"
            );
        }
    }

    #[test]
    fn default_base_urls_follow_the_placement() {
        let none = Placement::default();
        assert_eq!(ProviderKind::Azure.default_base_url(none), None);
        assert_eq!(
            ProviderKind::OpenAi.default_base_url(none).as_deref(),
            Some("https://api.openai.com/v1")
        );
        let at = |location| Placement {
            location: Some(location),
            ..none
        };
        assert_eq!(
            ProviderKind::Vertex.default_base_url(at("global")).as_deref(),
            Some("https://aiplatform.googleapis.com/v1")
        );
        assert_eq!(
            ProviderKind::Vertex.default_base_url(at("europe-west4")).as_deref(),
            Some("https://europe-west4-aiplatform.googleapis.com/v1")
        );
        assert_eq!(
            ProviderKind::Bedrock.default_base_url(none).as_deref(),
            Some("https://bedrock-runtime.us-east-1.amazonaws.com")
        );
        let eu = Placement {
            region: Some("eu-west-1"),
            ..none
        };
        assert_eq!(
            ProviderKind::Bedrock.default_base_url(eu).as_deref(),
            Some("https://bedrock-runtime.eu-west-1.amazonaws.com")
        );
    }
}
