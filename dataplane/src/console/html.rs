//! HTML building blocks: escaping (every dynamic string goes through `esc`), the page frame
//! with its navigation, and small inline SVG charts. No template engine, no inline script.

use std::fmt::Write;

use axum::response::Html;

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a value for a URL query component.
pub fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Who is looking, for the navigation bar.
pub struct Nav<'a> {
    pub user: &'a str,
    pub admin: bool,
    pub csrf: &'a str,
}

/// A whole page: head (embedded CSS and JS only), navigation, `body` (already escaped HTML).
pub fn page(title: &str, nav: Option<&Nav<'_>>, body: &str) -> Html<String> {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Reflow console</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         <script src=\"/console/assets/console.js\" defer></script></head><body>",
        esc(title)
    );
    out.push_str("<header><span class=\"brand\">Reflow console</span>");
    if let Some(nav) = nav {
        out.push_str(
            "<nav><a href=\"/console/me\">My tools</a><a href=\"/console/activity\">Activity</a>\
             <a href=\"/console/sessions\">Sessions</a>",
        );
        if nav.admin {
            out.push_str("<a href=\"/console/admin\">Admin</a>");
        }
        let _ = write!(
            out,
            "</nav><form class=\"logout\" method=\"post\" action=\"/console/logout\">\
             <span class=\"who\">{}</span>{}<button type=\"submit\">Log out</button></form>",
            esc(nav.user),
            csrf_field(nav.csrf)
        );
    }
    out.push_str("</header><main>");
    out.push_str(body);
    out.push_str("</main></body></html>");
    Html(out)
}

/// The hidden CSRF field every POST form carries.
pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn time_text(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A small line chart of `values` (oldest first) as inline SVG, with a title for hovering.
pub fn sparkline(values: &[f64], label: &str) -> String {
    const W: f64 = 160.0;
    const H: f64 = 32.0;
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let mut points = String::new();
    let step = if values.len() > 1 {
        W / (values.len() - 1) as f64
    } else {
        0.0
    };
    for (i, v) in values.iter().enumerate() {
        let y = if max > 0.0 {
            H - (v / max) * (H - 2.0) - 1.0
        } else {
            H - 1.0
        };
        let _ = write!(points, "{:.1},{:.1} ", i as f64 * step, y);
    }
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" \
         aria-label=\"{l}\"><title>{l} (max {max:.1})</title>\
         <polyline fill=\"none\" stroke=\"currentColor\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        points.trim_end(),
        l = esc(label),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc("<img src=x onerror='a'>&\""),
            "&lt;img src=x onerror=&#39;a&#39;&gt;&amp;&quot;"
        );
        assert_eq!(url_component("a b/&c"), "a%20b%2F%26c");
    }

    #[test]
    fn times_render_in_utc() {
        assert_eq!(time_text(0), "1970-01-01 00:00:00");
        assert_eq!(time_text(1_796_601_600_000), "2026-12-07 00:00:00");
    }

    #[test]
    fn sparkline_scales_to_the_maximum() {
        let svg = sparkline(&[0.0, 5.0, 10.0], "p50 <ms>");
        assert!(
            svg.contains("points=\"0.0,31.0 80.0,16.0 160.0,1.0\""),
            "{svg}"
        );
        assert!(svg.contains("p50 &lt;ms&gt;"));
    }
}
