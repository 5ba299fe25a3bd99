//! Free text people write (a justification, a reason, a ticket number): what every service
//! accepts, checked in one place. What is written here is later shown to others, in a
//! terminal, a page or a SIEM, so it carries no control characters beyond line breaks.

/// The most characters a justification or a reason may have.
pub const MAX_FREE_TEXT: usize = 1000;

/// `text`, trimmed, when it is text a person may write in a free-text field: at most `max`
/// characters (not bytes), and no control characters but line breaks and tabs (an escape
/// sequence would reach the terminal of whoever reads it; no database keeps a NUL as text).
/// Otherwise what is wrong with it.
pub fn free_text(text: &str, max: usize) -> Result<&str, String> {
    checked(text, max, |c| matches!(c, '\n' | '\r' | '\t'))
}

/// The same for a one-line field (a ticket's system or number): no line breaks either.
pub fn one_line(text: &str, max: usize) -> Result<&str, String> {
    checked(text, max, |_| false)
}

/// A name shown to others as who or what something is (a display name of a user, a group or
/// an app; a custom role's): a one-line text as [`one_line`] that also reads as what it is,
/// not as another name:
/// - words apart by one plain space: a no-break, ideographic or Braille blank space, or two
///   spaces, makes `Exchange Admins` twice;
/// - letters of one script, or Latin beside Han, Kana or Hangul (UTS #39's highly
///   restrictive level): Latin mixed with another script is how a lookalike is made
///   (`Exchange Аdmins`, its `А` Cyrillic; `Exchange Admհns`, its `հ` Armenian); letters
///   outside Unicode's identifier profile (Cherokee, small capitals, IPA) are refused;
/// - no MIME encoded-word (`=?UTF-8?B?…?=`), which a mail reader shows decoded, whatever it
///   hides, in a subject that names it;
/// - plain characters: none Unicode writes another way in its compatibility form (NFKC), so
///   no full-width `Ｅ`, mathematical `𝐄`, circled `Ⓔ` or ligature `ﬁ` dressed as a letter.
pub fn name(text: &str, max: usize) -> Result<&str, String> {
    use unicode_normalization::UnicodeNormalization;
    use unicode_security::{RestrictionLevel, RestrictionLevelDetection};
    let text = one_line(text, max)?;
    // Spacing first: a no-break space pasted from a document is the likeliest mistake.
    if text.contains("  ") || text.chars().any(|c| (c.is_whitespace() && c != ' ') || c == '\u{2800}') {
        return Err("must have its words separated by single spaces (plain ones, not no-break or ideographic)".into());
    }
    if !text.nfkc().eq(text.nfc()) {
        return Err(
            "must be written in plain characters (no full-width, mathematical, circled, superscript or ligature forms, such as ™ or ²)"
                .into(),
        );
    }
    // Letters only (spaces, digits, punctuation and emoji pass for nothing); a letter outside
    // Unicode's identifier profile (Cherokee, small capitals, IPA) makes the name unrestricted.
    let letters: String = text.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.as_str().detect_restriction_level() > RestrictionLevel::HighlyRestrictive {
        return Err(
            "must be written in one script, or Latin beside Han, Kana or Hangul (letters of two scripts make lookalikes: a Cyrillic а for a Latin a)"
                .into(),
        );
    }
    if text.find("=?").is_some_and(|at| text[at + 2..].contains("?=")) {
        return Err("must not hold a MIME encoded-word (=?…?=): a mail reader would show it decoded".into());
    }
    Ok(text)
}

/// Whether two names look the same to a reader though written apart (`GIobal Administrator`,
/// its `I` capital, `GLOBAL ADMINISTRATOR`, `Globał Administrator`, `Global·Administrator`
/// and `Global Administrator`): the same confusable skeleton (Unicode's UTS #39) in either
/// case, marks over letters, spaces and punctuation aside.
pub fn looks_like(a: &str, b: &str) -> bool {
    let [a_lower, a_cased] = name_keys(a);
    let [b_lower, b_cased] = name_keys(b);
    a_lower == b_lower || a_cased == b_cased
}

/// Why `name` is refused beside `held`, the name it reads as ([`name_keys`]): none when they
/// are the same name in another case (the caller says it is taken).
pub fn reads_as(kind: &str, name: &str, held: &str) -> Option<String> {
    (name.to_lowercase() != held.to_lowercase()).then(|| {
        format!("{name} reads as the {kind} {held} (names that look alike are held once): choose another name")
    })
}

/// How a name reads, as two keys: two names look alike ([`looks_like`]) when either key is
/// the same. Held once each by a unique index where names must be told apart (groups, apps,
/// custom roles), so `орѕ` (Cyrillic) is refused beside `ops`, and `Payrnents` beside
/// `Payments`, however many are written at once. The first key reads the name in lowercase
/// (`OPS` is `ops`), the second as written (`AIl Staff`, its `I` capital, is `All Staff`).
/// What is read: letters and digits, a sign read as one (`|ab` is `lab`), and symbols that
/// stand apart (`C++` is not `C#`, `Ops 🔥` not `Ops 🚀`); spaces, punctuation and dashes
/// aside (`sales—` and `Ops-Team` read as `sales` and `Ops Team`). A name of those alone is
/// read by them (`!!!` is not `??`). As written, beyond the skeleton, `vv` reads as `w` and
/// `cl` as `d` (`vveb`, `clev`); not in capitals (`ACL` is not `AD`).
pub fn name_keys(name: &str) -> [String; 2] {
    use unicode_normalization::UnicodeNormalization;
    use unicode_normalization::char::is_combining_mark;
    let skeleton = |s: &str| -> String {
        let bare: String = s.nfd().filter(|c| !is_combining_mark(*c)).collect();
        let skeleton: String = unicode_security::skeleton(&bare).collect();
        skeleton.nfd().filter(|c| !is_combining_mark(*c)).collect()
    };
    let symbol = |c: char| match c {
        '+' | '#' | '&' | '@' | '$' | '%' | '*' | '=' | '<' | '>' | '~' | '^' => true,
        c if c.is_ascii() || c.is_alphanumeric() || c.is_whitespace() => false,
        // Latin-1's signs, general and supplemental punctuation, CJK punctuation.
        '\u{A1}'..='\u{BF}' | '\u{2000}'..='\u{206F}' | '\u{2E00}'..='\u{2E7F}' | '\u{3000}'..='\u{303F}' => false,
        _ => true,
    };
    let read = |c: &char| {
        let mut letter = [0; 4];
        let letter = skeleton(c.encode_utf8(&mut letter));
        c.is_alphanumeric() || symbol(*c) || (letter.len() == 1 && letter.chars().all(|r| r.is_ascii_alphanumeric()))
    };
    let seen = |s: &str, as_written: bool| -> String {
        let kept: String = s.chars().filter(read).collect();
        if kept.is_empty() {
            let all: String = s.chars().filter(|c| !c.is_whitespace()).collect();
            return skeleton(&all).chars().flat_map(char::to_lowercase).collect();
        }
        let mut read = skeleton(&kept);
        if as_written {
            read = read.replace("vv", "w").replace("cl", "d");
        }
        (read.chars().flat_map(char::to_lowercase))
            .filter(|c| c.is_alphanumeric() || symbol(*c))
            .collect()
    };
    [seen(&name.to_lowercase(), false), seen(name, true)]
}

/// A group's, an app's or a custom role's name: as [`name`], and never a lookalike of a
/// built-in role's ([`built_in_role_like`]).
pub fn own_name(text: &str, max: usize) -> Result<&str, String> {
    let text = name(text, max)?;
    // What the audit and the CLI put after an app's name.
    if text.to_lowercase().ends_with("(app)") {
        return Err("must not end with (app), which marks an app's name".into());
    }
    match built_in_role_like(text) {
        Some(role) => Err(format!("must not look like the built-in role {role}")),
        None => Ok(text),
    }
}

/// The built-in role (a directory role, or a group's Member or Owner) whose name `name` looks
/// like: a group, app or custom role so named would read as that role wherever it is named
/// ("Group Member of Global Administrator").
pub fn built_in_role_like(name: &str) -> Option<&'static str> {
    use pim_proto::catalogue::{BUILT_IN_ROLES, GROUP_ACCESS_ROLES};
    (BUILT_IN_ROLES.iter().chain(GROUP_ACCESS_ROLES))
        .map(|r| r.name)
        .find(|role| looks_like(name, role))
}

/// Whether `c` changes how the text around it shows rather than being seen: a control
/// character (NUL, a terminal escape, a line break), one that reorders or breaks lines
/// (bidirectional overrides, isolates and marks, Unicode's line and paragraph separators),
/// or one that takes no room at all: Unicode's default-ignorable characters (a zero-width
/// space, a word joiner, a soft hyphen, a byte-order mark, the Hangul fillers, the tag
/// characters, the Mongolian and Khmer invisibles, the interlinear annotation and musical
/// formatting marks), which would make `INC\u{200B}123` or `INC\u{AD}123` look like `INC123`,
/// or hide a message in tags. Kept: the zero-width joiner and non-joiner (Persian, the Indic
/// scripts and emoji need them) and the variation selectors (an emoji's presentation, a
/// CJK character's form).
pub fn is_unseen(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFF8}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// Whether a zero-width joiner or non-joiner stands where no script needs one: at either end,
/// or between two ASCII characters (`INC\u{200D}1` shows as `INC1`). Between letters of
/// Persian or an Indic script, or within an emoji sequence, it stays.
fn stray_joiner(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    chars.iter().enumerate().any(|(i, c)| {
        matches!(c, '\u{200C}' | '\u{200D}')
            && match (i.checked_sub(1).and_then(|p| chars.get(p)), chars.get(i + 1)) {
                (Some(before), Some(after)) => before.is_ascii() && after.is_ascii(),
                _ => true,
            }
    })
}

fn checked(text: &str, max: usize, allowed: fn(char) -> bool) -> Result<&str, String> {
    let text = text.trim();
    if text.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if text.chars().any(|c| is_unseen(c) && !allowed(c)) || stray_joiner(text) {
        return Err(
            "must not contain control characters (such as NUL, terminal escape sequences or bidirectional overrides)"
                .into(),
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::{free_text, name, one_line};

    #[test]
    fn a_name_reads_as_itself_not_as_another() {
        for own in [
            "Exchange Admins",
            "Équipe sécurité",
            "Служба безопасности",
            "東京 Ops",
            "운영팀 Seoul",
            "فريق العمليات",
            "ops-team (EU) 2",
            "On call 👩\u{200D}💻",
            "E\u{301}quipe",
        ] {
            assert_eq!(name(own, 256), Ok(own), "{own:?} is someone's name");
        }
        for lookalike in [
            "Exchange \u{410}dmins",
            "\u{395}xchange Admins",
            "Exchange\u{A0}Admins",
            "Exchange  Admins",
            "Exchange\u{3000}Admins",
            "Exchange Admins\u{2800}",
            "Exchange\tAdmins",
            "=?UTF-8?B?R2xvYmFsIEFkbWluaXN0cmF0b3LigK4gcmVtb3ZlZA==?=",
            "Ops =?utf-8?q?=E2=80=AE?= team",
            "Exchange \u{202e}Admins",
            "\u{FF25}xchange Admins",
            "\u{1D404}xchange Admins",
            "\u{24BA}xchange Admins",
            "O\u{FB03}ce Admins",
            "Exchange \u{13AA}dmins",
            "Exchange Adm\u{570}ns",
            "Global \u{1D00}dministrator",
            "Global Administrato\u{280}",
            "فريق Ops",
        ] {
            assert!(name(lookalike, 256).is_err(), "{lookalike:?} passes for another name");
        }
        assert_eq!(name("  Exchange Admins ", 256), Ok("Exchange Admins"), "trimmed");
        assert!(super::looks_like("GIobal Administrator", "Global Administrator"));
        assert!(super::looks_like("global administrator", "Global Administrator"));
        assert!(
            super::looks_like("G\u{406}obal Reader", "Global Reader"),
            "its I Cyrillic"
        );
        assert!(!super::looks_like("Global Reader", "Global Administrator"));
        for like in [
            "GLOBAL ADMINISTRATOR",
            "Global Administrator\u{323}",
            "Global Adm\u{EC}nistrator",
            "Globa\u{142} Administrator",
            "Glo\u{253}al Administrator",
            "Global Adminis\u{165}rator",
            "Global\u{B7}Administrator",
            "Global Administrator\u{3002}",
            "Global Adrninistrator",
        ] {
            assert!(super::looks_like(like, "Global Administrator"), "{like:?}");
        }
    }

    #[test]
    fn names_that_read_alike_share_a_key() {
        use super::name_keys;
        // Nor does a group pass for an app, as the records name apps.
        assert!(super::own_name("deploy-bot (App)", 256).is_err());
        assert!(super::own_name("deploy-bot (apps team)", 256).is_ok());
        // Each passes the name rule on its own (one script), and reads as the other.
        for (like, name) in [
            ("\u{43E}\u{440}\u{455}", "ops"),
            ("Payrnents", "Payments"),
            ("AIl Staff", "All Staff"),
            ("OPS", "ops"),
            ("Ops-Team", "Ops Team"),
            ("\u{395}\u{3A4}\u{391}", "ETA"),
            ("vveb", "web"),
            ("clev", "dev"),
            ("sales\u{2014}", "sales"),
            ("s\u{2014}ales", "sales"),
            ("|ab", "lab"),
        ] {
            assert!(super::name(like, 256).is_ok(), "{like:?} is a name");
            let (like_keys, keys) = (name_keys(like), name_keys(name));
            assert!(
                like_keys[0] == keys[0] || like_keys[1] == keys[1],
                "{like:?} reads as {name:?}"
            );
        }
        for (one, other) in [
            ("ops", "dev"),
            ("Payments", "Payroll"),
            ("Tier 1", "Tier 2"),
            ("\u{1F525}", "\u{1F680}"),
            ("ACL Admins", "AD Admins"),
            ("Mail Team", "Mall Team"),
            ("C++ Devs", "C# Devs"),
            ("Ops \u{1F525}", "Ops \u{1F680}"),
            ("Clash", "Dash"),
            ("!!!", "??"),
        ] {
            let (a, b) = (name_keys(one), name_keys(other));
            assert!(a[0] != b[0] && a[1] != b[1], "{one:?} and {other:?} read apart");
        }
    }

    #[test]
    fn free_text_is_counted_in_characters_and_refuses_control_characters() {
        assert_eq!(
            free_text("  mailbox migration\nINC1 ", 1000),
            Ok("mailbox migration\nINC1")
        );
        assert!(free_text(&"é".repeat(1000), 1000).is_ok(), "characters, not bytes");
        assert!(free_text(&"é".repeat(1001), 1000).is_err());
        for bad in ["ok\u{1b}[2J", "a\0b", "x\u{9b}31m", "\u{7f}", "abc\u{202e}fed"] {
            assert!(free_text(bad, 1000).is_err(), "{bad:?}");
        }
        for unseen in [
            "INC\u{200B}123",
            "INC\u{2060}123",
            "\u{FEFF}INC123",
            "abc\u{200F}def",
            "INC\u{AD}0012345",
            "approve\u{E0061}\u{E0070}",
            "Tier0\u{3164}Admins",
            "x\u{115F}",
            "a\u{180B}b",
            "INC\u{200D}1",
            "ops\u{200D}",
            "\u{200C}ops",
        ] {
            assert!(one_line(unseen, 100).is_err(), "{unseen:?} shows as what it is not");
        }
        for written in ["می\u{200C}خواهم", "👩\u{200D}💻 on call", "on call ❤\u{FE0F}"] {
            assert!(free_text(written, 100).is_ok(), "{written:?} is how some people write");
        }
        assert!(one_line("INC1\nfake row", 100).is_err());
        assert_eq!(one_line(" INC0012345 ", 100), Ok("INC0012345"));
    }
}
