//! Writers' clocks. The chain (seq and parent links) orders points, never the
//! `created` time a writer's clock put into a header: a host whose clock is behind, or
//! jumped, can give a point an older time than its parent's. Such a point is still the
//! newer one; this module only words the warning that says so.

use chrono::{DateTime, Utc};

use crate::format::Header;

/// A one-line warning when `child` (a point whose parent is `parent`) was created
/// before its parent by the headers' clocks; `None` when time goes forward (or a time
/// cannot be read: the reader that needs it reports that).
pub fn clock_went_back(child: &Header, parent: &Header) -> Option<String> {
    let time = |h: &Header| DateTime::parse_from_rfc3339(&h.created).map(|t| t.with_timezone(&Utc));
    let (c, p) = (time(child).ok()?, time(parent).ok()?);
    (c < p).then(|| {
        format!(
            "time goes backwards in {}: seq {} was created at {}, before its parent seq {} ({}); a writer's clock was wrong or jumped (check NTP). Points are ordered by seq, so seq {} is still the newer point",
            child.volume_name, child.seq, child.created, parent.seq, parent.created, child.seq
        )
    })
}
