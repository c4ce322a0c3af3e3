//! Syntax checks of names and references that the spec holds: Kubernetes object names, label keys and values,
//! Secret keys, Prometheus label names, container image references and HTTP URLs. Pure: no I/O.
//!
//! Each check returns `Err(reason)` with a lowercase sentence that says what the value must look like; the
//! caller puts it into a [`super::FieldError`] with the field path.

/// Longest DNS-1123 subdomain (Kubernetes object names such as Secrets and PriorityClasses).
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;
/// Longest label value, and longest name part of a qualified name (label keys).
pub const LABEL_VALUE_MAX: usize = 63;
/// Longest Secret key.
pub const SECRET_KEY_MAX: usize = 253;
/// Longest image repository name (registry and path, without tag and digest).
pub const IMAGE_NAME_MAX: usize = 255;

/// A DNS-1123 subdomain, as Kubernetes requires of Secret and PriorityClass names: at most 253 characters,
/// dot-separated parts of lowercase letters, digits and `-`, each starting and ending with a letter or digit.
pub fn check_dns1123_subdomain(name: &str) -> Result<(), String> {
    const RULE: &str = "must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', starting \
                        and ending with a letter or digit (e.g. 'example.com')";
    if name.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!("must be no more than {DNS1123_SUBDOMAIN_MAX} characters"));
    }
    let part_ok = |part: &str| {
        let b = part.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    if name.split('.').all(part_ok) { Ok(()) } else { Err(RULE.to_owned()) }
}

/// A DNS-1123 label, as Kubernetes requires of Service and namespace names: at most 63 lowercase letters, digits
/// and `-`, starting and ending with a letter or digit.
pub fn check_dns1123_label(name: &str) -> Result<(), String> {
    if name.len() <= LABEL_VALUE_MAX && !name.contains('.') && check_dns1123_subdomain(name).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "must be a lowercase RFC 1123 label: at most {LABEL_VALUE_MAX} lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        ))
    }
}

/// The name part of a qualified name, or a non-empty label value: at most 63 characters of letters, digits,
/// `-`, `_` and `.`, starting and ending with a letter or digit.
fn name_part_ok(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A Kubernetes label key (qualified name): an optional DNS-1123 subdomain prefix and `/`, then a name of at
/// most 63 letters, digits, `-`, `_` and `.` that starts and ends with a letter or digit.
pub fn check_qualified_name(key: &str) -> Result<(), String> {
    const RULE: &str = "must be a qualified name: letters, digits, '-', '_' and '.', starting and ending with a \
                        letter or digit, with an optional DNS subdomain prefix and '/' (e.g. 'MyName', \
                        'my.name' or 'example.com/my-name')";
    let (prefix, name) = match key.split_once('/') {
        None => (None, key),
        Some((prefix, name)) => (Some(prefix), name),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("the prefix before '/' must not be empty".to_owned());
        }
        check_dns1123_subdomain(prefix).map_err(|e| format!("the prefix before '/' {e}"))?;
    }
    if name.is_empty() {
        return Err("the name part must not be empty".to_owned());
    }
    if name.len() > LABEL_VALUE_MAX {
        return Err(format!("the name part must be no more than {LABEL_VALUE_MAX} characters"));
    }
    if name_part_ok(name) { Ok(()) } else { Err(RULE.to_owned()) }
}

/// A Kubernetes label value: empty, or at most 63 letters, digits, `-`, `_` and `.` that start and end with a
/// letter or digit.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > LABEL_VALUE_MAX {
        return Err(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    if value.is_empty() || name_part_ok(value) {
        Ok(())
    } else {
        Err("must be empty or consist of letters, digits, '-', '_' and '.', starting and ending with a letter or \
             digit (e.g. 'MyValue', 'my_value' or '12345')"
            .to_owned())
    }
}

/// A key of a Secret or ConfigMap: at most 253 letters, digits, `-`, `_` and `.`, and not `.`, `..` or
/// starting with `..`.
pub fn check_secret_key(key: &str) -> Result<(), String> {
    if key.len() > SECRET_KEY_MAX {
        return Err(format!("must be no more than {SECRET_KEY_MAX} characters"));
    }
    if key.is_empty() || !key.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) {
        return Err("a valid Secret key must consist of letters, digits, '-', '_' or '.' (e.g. 'key.name' or \
                    'KEY_NAME')"
            .to_owned());
    }
    if key == "." || key.starts_with("..") {
        return Err("must not be '.' or '..' and must not start with '..'".to_owned());
    }
    Ok(())
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn check_label_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = b.first().is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if ok {
        Ok(())
    } else {
        Err("must be a Prometheus label name: a letter or '_' followed by letters, digits or '_' (e.g. 'region' \
             or 'team_name')"
            .to_owned())
    }
}

/// A container image reference as the distribution reference grammar defines it:
/// `[registry[:port]/]path[:tag][@algorithm:hex]`, with a lowercase path.
pub fn check_image_reference(image: &str) -> Result<(), String> {
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace".to_owned());
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    // A tag is a ':' after the last '/' (a ':' before it is the registry's port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    if name.is_empty() {
        return Err("the repository name is missing (e.g. 'prom/prometheus')".to_owned());
    }
    if name.len() > IMAGE_NAME_MAX {
        return Err(format!("the repository name must be no more than {IMAGE_NAME_MAX} characters"));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':']) || first == "localhost" || first.bytes().any(|c| c.is_ascii_uppercase()) {
            check_registry(first)?;
            components.remove(0);
        }
    }
    for component in components {
        check_path_component(component)?;
    }
    Ok(())
}

fn check_digest(digest: &str) -> Result<(), String> {
    const RULE: &str = "the digest must look like 'sha256:' followed by at least 32 hex digits";
    let (algorithm, hex) = digest.split_once(':').ok_or_else(|| RULE.to_owned())?;
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '-', '_']).all(|part| {
            part.bytes().next().is_some_and(|c| c.is_ascii_alphabetic())
                && part.bytes().all(|c| c.is_ascii_alphanumeric())
        });
    if algorithm_ok && hex.len() >= 32 && hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(RULE.to_owned())
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    if !b.is_empty()
        && b.len() <= 128
        && b.first().is_some_and(word)
        && b.iter().all(|c| word(c) || matches!(c, b'.' | b'-'))
    {
        Ok(())
    } else {
        Err(format!(
            "the tag {tag:?} must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-' (e.g. \
             'v2.55.1')"
        ))
    }
}

fn check_registry(registry: &str) -> Result<(), String> {
    let err = || format!("the registry {registry:?} must be a host name with an optional port (e.g. 'quay.io')");
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (ipv6, after) = rest.split_once(']').ok_or_else(err)?;
        if ipv6.is_empty() || !ipv6.bytes().all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.')) {
            return Err(err());
        }
        match after {
            "" => ("", None),
            _ => ("", Some(after.strip_prefix(':').ok_or_else(err)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(err());
    }
    if !registry.starts_with('[') {
        let component_ok = |c: &str| {
            let b = c.as_bytes();
            !b.is_empty()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
                && b.first().is_some_and(u8::is_ascii_alphanumeric)
                && b.last().is_some_and(u8::is_ascii_alphanumeric)
        };
        if !host.split('.').all(component_ok) {
            return Err(err());
        }
    }
    Ok(())
}

/// A path component: lowercase letters and digits, separated by one `.` or `_`, two `_`, or any number of `-`.
fn check_path_component(component: &str) -> Result<(), String> {
    let b = component.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut ok = b.first().is_some_and(alnum) && b.last().is_some_and(alnum);
    let mut i = 0;
    while ok && i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|c| c == b'-');
    }
    if ok {
        Ok(())
    } else if b.iter().any(u8::is_ascii_uppercase) {
        Err(format!("the repository path {component:?} must be lowercase"))
    } else {
        Err(format!(
            "the repository path {component:?} must be lowercase letters and digits separated by '.', '_', '__' \
             or '-' (e.g. 'prom/prometheus')"
        ))
    }
}

/// An absolute `http` or `https` URL with a host, as Prometheus and the object storage client need.
pub fn check_http_url(url: &str) -> Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_owned());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("must start with http:// or https://".to_owned());
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!("the scheme {scheme:?} is not supported: use http or https"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((ip, after)) = v6.split_once(']') else {
            return Err("the IPv6 host must be closed with ']'".to_owned());
        };
        if ip.is_empty() || !ip.bytes().all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.' | b'%')) {
            return Err(format!("the IPv6 host [{ip}] is not valid"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| "a ':' must follow the IPv6 host".to_owned())?),
        };
        (v6, port)
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".to_owned());
    }
    if !host_port.starts_with('[')
        && !host.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'%'))
    {
        return Err(format!("the host {host:?} is not a valid host name"));
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|c| c.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !valid {
            return Err(format!("the port {port:?} must be a number from 1 to 65535"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_subdomains_follow_rfc_1123() {
        for ok in ["a", "my-secret", "s3.creds", "0abc", &"a".repeat(253)] {
            assert_eq!(check_dns1123_subdomain(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "My-Secret", "-a", "a-", "a..b", "a_b", ".a", "a.", "ü", &"a".repeat(254)] {
            assert!(check_dns1123_subdomain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn qualified_names_allow_an_optional_prefix() {
        for ok in ["zone", "kubernetes.io/hostname", "node.kubernetes.io/instance-type", "A_b.c", "x"] {
            assert_eq!(check_qualified_name(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "/a", "a/", "a/b/c", "-a", "a-", "Example.com/a", "a b", &"a".repeat(64)] {
            assert!(check_qualified_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn label_values_may_be_empty() {
        for ok in ["", "v1", "us-east-1", "a.b_c"] {
            assert_eq!(check_label_value(ok), Ok(()), "{ok:?}");
        }
        for bad in ["-a", "a b", "a/", &"a".repeat(64)] {
            assert!(check_label_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secret_keys_are_file_names_without_dot_dot() {
        for ok in ["token", "objstore.yml", "AWS_ACCESS_KEY_ID", ".hidden", "a..b"] {
            assert_eq!(check_secret_key(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", ".", "..", "..a", "a/b", "a b", &"k".repeat(254)] {
            assert!(check_secret_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prometheus_label_names_are_identifiers() {
        for ok in ["region", "_x", "a1", "Team_Name"] {
            assert_eq!(check_label_name(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "1a", "a-b", "a.b", "ä"] {
            assert!(check_label_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_references_follow_the_distribution_grammar() {
        for ok in [
            "prom/prometheus:v2.55.1",
            "prometheus",
            "quay.io/thanos/thanos:v0.37.2",
            "localhost:5000/prom/prometheus",
            "registry.example.com:443/team/prom_etheus__x:latest",
            "[::1]:5000/prom",
            "prom/prometheus@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "prom/prometheus:v3@sha256:0123456789abcdef0123456789abcdef",
            "my-registry/a--b",
        ] {
            assert_eq!(check_image_reference(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "Prom/Prometheus",
            "prom/prometheus:",
            "prom/prometheus:.x",
            "prom/ prometheus",
            "prom//prometheus",
            "prom/prometheus@sha256:abc",
            ":v1",
            "registry.example.com:x/prom",
            "prom/-prometheus",
            "prom/prometheus:v1:v2",
        ] {
            assert!(check_image_reference(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn http_urls_need_a_scheme_and_a_host() {
        for ok in [
            "http://receiver:9090/api/v1/write",
            "https://user:pw@example.com/push?x=1#f",
            "HTTPS://EXAMPLE.COM",
            "http://[::1]:8080/",
            "http://10.0.0.1",
        ] {
            assert_eq!(check_http_url(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "receiver:9090/api/v1/write",
            "ftp://example.com",
            "http://",
            "http:///path",
            "http://exa mple.com",
            "http://example.com:0",
            "http://example.com:99999",
            "http://example.com:",
            "http://[::1",
            "http://ex$ample.com",
        ] {
            assert!(check_http_url(bad).is_err(), "{bad:?}");
        }
    }
}
