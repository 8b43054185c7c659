//! Consumer groups: list, describe (members, committed offsets, lag), reset offsets, delete.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::groups::GroupInfo;
use rdkafka::metadata::Metadata;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::{
    admin_client, consumer, is_internal, metadata, options, watermarks, AdminError, Ctx, TIMEOUT,
};
use crate::kafka::{KafkaConfig, QuietContext};

/// One consumer group in `kgate groups list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group id.
    pub group: String,
    /// `Stable`, `Empty`, `PreparingRebalance`, `CompletingRebalance`, `Dead`.
    pub state: String,
    /// `consumer` for Kafka consumers, else what the members use (`connect`, ...); empty for a
    /// group that only has committed offsets.
    pub protocol_type: String,
    /// The assignor the members agreed on (`range`, `cooperative-sticky`, ...).
    pub protocol: String,
    /// How many members are connected.
    pub members: usize,
    /// Records left to read: Σ(end offset − committed offset) over the partitions it has
    /// committed offsets for; `None` when the offsets could not be read.
    pub lag: Option<i64>,
}

/// Partitions of one topic.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TopicPartitions {
    /// The topic.
    pub topic: String,
    /// Its partitions.
    pub partitions: Vec<i32>,
}

/// One member of a group.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupMember {
    /// The member id the coordinator gave it.
    pub id: String,
    /// Its `client.id`.
    pub client_id: String,
    /// The host it connects from.
    pub host: String,
    /// The partitions assigned to it (empty for a protocol other than `consumer`).
    pub assignment: Vec<TopicPartitions>,
}

/// One partition a group reads.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The group's committed offset (the next record it reads); `None` if it committed none.
    pub committed: Option<i64>,
    /// The partition's end offset (high watermark).
    pub end: i64,
    /// `end − committed` (at least 0); `None` without a committed offset.
    pub lag: Option<i64>,
    /// The member id it is assigned to, if any.
    pub member: Option<String>,
}

/// What `kgate groups describe G` shows.
#[derive(Debug, Clone, Serialize)]
pub struct GroupDetail {
    /// The group id.
    pub group: String,
    /// Its state (see [`GroupSummary::state`]).
    pub state: String,
    /// Its protocol type.
    pub protocol_type: String,
    /// Its assignor.
    pub protocol: String,
    /// The connected members.
    pub members: Vec<GroupMember>,
    /// Every partition it has a committed offset for or is assigned, by topic and partition.
    pub partitions: Vec<PartitionLag>,
    /// Σ lag.
    pub total_lag: i64,
}

/// Where `reset_offsets` moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The first offset still held (the low watermark).
    Earliest,
    /// The end (the high watermark): skip everything there is.
    Latest,
    /// The first record at or after this time (the end where there is none).
    Datetime(SystemTime),
    /// This offset, kept within [low, high] of each partition.
    Offset(i64),
    /// The committed offset plus this (negative: back), kept within [low, high]; from the low
    /// watermark where nothing is committed.
    ShiftBy(i64),
}

/// One partition's offset change.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OffsetChange {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The committed offset before; `None` when none was.
    pub current: Option<i64>,
    /// The offset after.
    pub new: i64,
    /// Records the group would have left to read after it: `high − new`.
    pub lag_after: i64,
}

/// Decodes Kafka's ConsumerProtocol MemberAssignment (version i16, [topic: string,
/// [partition: i32]], user_data: bytes): the partitions assigned to a member. `None` when the
/// bytes are not one (another protocol type).
pub fn parse_member_assignment(bytes: &[u8]) -> Option<Vec<TopicPartitions>> {
    struct R<'a>(&'a [u8]);
    impl R<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            if self.0.len() < n {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }
        fn i16(&mut self) -> Option<i16> {
            self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
        }
        fn i32(&mut self) -> Option<i32> {
            self.take(4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
    }
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut r = R(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(r.i16()?).ok()?;
        let topic = std::str::from_utf8(r.take(len)?).ok()?.to_string();
        let n = r.i32()?;
        if n < 0 || n as usize > r.0.len() / 4 {
            return None;
        }
        let mut partitions = Vec::with_capacity(n as usize);
        for _ in 0..n {
            partitions.push(r.i32()?);
        }
        partitions.sort_unstable();
        out.push(TopicPartitions { topic, partitions });
    }
    out.sort_by(|a, b| a.topic.cmp(&b.topic));
    Some(out)
}

fn members_of(g: &GroupInfo) -> Vec<GroupMember> {
    let mut members: Vec<GroupMember> = g
        .members()
        .iter()
        .map(|m| GroupMember {
            id: m.id().to_string(),
            client_id: m.client_id().to_string(),
            host: m.client_host().to_string(),
            assignment: if g.protocol_type() == "consumer" {
                m.assignment()
                    .and_then(parse_member_assignment)
                    .unwrap_or_default()
            } else {
                Vec::new()
            },
        })
        .collect();
    members.sort_by(|a, b| a.client_id.cmp(&b.client_id).then(a.id.cmp(&b.id)));
    members
}

/// Every partition of every non-internal topic (or of `topic` only).
fn all_partitions(md: &Metadata, topic: Option<&str>) -> Vec<(String, i32)> {
    md.topics()
        .iter()
        .filter(|t| t.error().is_none() && !is_internal(t.name()))
        .filter(|t| topic.is_none_or(|want| t.name() == want))
        .flat_map(|t| {
            t.partitions()
                .iter()
                .map(move |p| (t.name().to_string(), p.id()))
        })
        .collect()
}

/// The offsets `group` committed for `parts` (one OffsetFetch request); partitions without
/// one are left out.
fn committed(
    k: &KafkaConfig,
    group: &str,
    parts: &[(String, i32)],
) -> Result<HashMap<(String, i32), i64>, AdminError> {
    if parts.is_empty() {
        return Ok(HashMap::new());
    }
    let c = consumer(k, Some(group))?;
    let ctx = Ctx::new(k, "read the committed offsets of", "consumer group", group);
    let mut tpl = TopicPartitionList::with_capacity(parts.len());
    for (t, p) in parts {
        tpl.add_partition(t, *p);
    }
    let res = c
        .committed_offsets(tpl, TIMEOUT)
        .map_err(|e| ctx.kafka(e))?;
    Ok(res
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect())
}

/// The group as the coordinator describes it; `None` when it is unknown (`Dead`).
/// A group's state, protocol type, protocol and members.
type Described = (String, String, String, Vec<GroupMember>);

/// `fetch_group_list`, tried again for up to 20 s while the group coordinator is still loading
/// or moving (a fresh cluster's `__consumer_offsets`, a broker restart): those answers mean
/// "ask again", not "no such group".
fn group_list(
    c: &BaseConsumer<QuietContext>,
    group: Option<&str>,
) -> rdkafka::error::KafkaResult<rdkafka::groups::GroupList> {
    use rdkafka::types::RDKafkaErrorCode as C;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match c.fetch_group_list(group, TIMEOUT) {
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        C::CoordinatorLoadInProgress
                            | C::CoordinatorNotAvailable
                            | C::NotCoordinator
                    )
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            r => return r,
        }
    }
}

fn group_info(
    c: &BaseConsumer<QuietContext>,
    k: &KafkaConfig,
    group: &str,
) -> Result<Option<Described>, AdminError> {
    let list = group_list(c, Some(group))
        .map_err(|e| Ctx::new(k, "describe", "consumer group", group).kafka(e))?;
    Ok(list
        .groups()
        .iter()
        .find(|g| g.name() == group && g.state() != "Dead")
        .map(|g| {
            (
                g.state().to_string(),
                g.protocol_type().to_string(),
                g.protocol().to_string(),
                members_of(g),
            )
        }))
}

fn total_lag(offsets: &HashMap<(String, i32), i64>, marks: &super::Watermarks) -> i64 {
    offsets
        .iter()
        .map(|(key, off)| marks.get(key).map_or(0, |(_, high)| (high - off).max(0)))
        .sum()
}

/// How many groups' committed offsets `list_groups` asks for at once.
const LAG_FETCHES: usize = 16;

/// Every consumer group with its state, members and total lag (one OffsetFetch per group),
/// by group id.
pub async fn list_groups(k: &KafkaConfig) -> Result<Vec<GroupSummary>, AdminError> {
    let k = k.clone();
    tokio::task::spawn_blocking(move || {
        let c = consumer(&k, None)?;
        let md = metadata(&c, &k, None)?;
        let list = group_list(&c, None)
            .map_err(|e| Ctx::new(&k, "list", "consumer groups", "").kafka(e))?;
        let parts = all_partitions(&md, None);
        let marks = watermarks(&c, &parts)
            .map_err(|e| Ctx::new(&k, "read offsets of", "topics", "").kafka(e))?;
        let groups = list.groups();
        let names: Vec<String> = groups.iter().map(|g| g.name().to_string()).collect();
        // One OffsetFetch per group, each through a client with that group.id: asked
        // LAG_FETCHES at a time (one after another, 100 groups took 12 s).
        let mut lags: Vec<Option<i64>> = Vec::with_capacity(groups.len());
        for chunk in names.chunks(LAG_FETCHES) {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|g| {
                        let (k, parts, marks) = (&k, &parts, &marks);
                        s.spawn(move || {
                            committed(k, g, parts)
                                .ok()
                                .map(|offsets| total_lag(&offsets, marks))
                        })
                    })
                    .collect();
                lags.extend(handles.into_iter().map(|h| h.join().ok().flatten()));
            });
        }
        let mut out: Vec<GroupSummary> = groups
            .iter()
            .zip(lags)
            .map(|(g, lag)| GroupSummary {
                group: g.name().to_string(),
                state: g.state().to_string(),
                protocol_type: g.protocol_type().to_string(),
                protocol: g.protocol().to_string(),
                members: g.members().len(),
                lag,
            })
            .collect();
        out.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(out)
    })
    .await?
}

/// A group's state, members and their assignments, and per partition its committed offset,
/// end offset and lag.
pub async fn describe_group(k: &KafkaConfig, group: &str) -> Result<GroupDetail, AdminError> {
    let k = k.clone();
    let group = group.to_string();
    tokio::task::spawn_blocking(move || {
        let c = consumer(&k, None)?;
        let md = metadata(&c, &k, None)?;
        let info = group_info(&c, &k, &group)?;
        let parts = all_partitions(&md, None);
        let offsets = committed(&k, &group, &parts)?;
        let Some((state, protocol_type, protocol, members)) = info.or_else(|| {
            (!offsets.is_empty()).then(|| ("Empty".into(), String::new(), String::new(), vec![]))
        }) else {
            return Err(AdminError::NoGroup {
                brokers: k.brokers.join(","),
                group,
            });
        };
        let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
        for m in &members {
            for tp in &m.assignment {
                for p in &tp.partitions {
                    owner.insert((tp.topic.clone(), *p), m.id.clone());
                }
            }
        }
        let keys: BTreeSet<(String, i32)> = offsets
            .keys()
            .cloned()
            .chain(owner.keys().cloned())
            .collect();
        let keys: Vec<(String, i32)> = keys.into_iter().collect();
        let marks = watermarks(&c, &keys)
            .map_err(|e| Ctx::new(&k, "read offsets for", "consumer group", &group).kafka(e))?;
        let partitions: Vec<PartitionLag> = keys
            .iter()
            .map(|key| {
                let end = marks.get(key).map_or(0, |m| m.1);
                let committed = offsets.get(key).copied();
                PartitionLag {
                    topic: key.0.clone(),
                    partition: key.1,
                    committed,
                    end,
                    lag: committed.map(|c| (end - c).max(0)),
                    member: owner.get(key).cloned(),
                }
            })
            .collect();
        Ok(GroupDetail {
            total_lag: partitions.iter().filter_map(|p| p.lag).sum(),
            group,
            state,
            protocol_type,
            protocol,
            members,
            partitions,
        })
    })
    .await?
}

/// Moves `group`'s committed offsets on every partition of `topic` to `to`, and answers the
/// changes; with `execute` false (a dry run) it commits nothing. Refused while the group has
/// members: the change would be overwritten by their next commit. The commit is made by a
/// consumer with the group's id that `assign`s the partitions (it never joins the group).
pub async fn reset_offsets(
    k: &KafkaConfig,
    group: &str,
    topic: &str,
    to: ResetTo,
    execute: bool,
) -> Result<Vec<OffsetChange>, AdminError> {
    let k = k.clone();
    let group = group.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c = consumer(&k, None)?;
        let md = metadata(&c, &k, None)?;
        let parts = all_partitions(&md, Some(&topic));
        if parts.is_empty() {
            return Err(AdminError::NoTopic {
                brokers: k.brokers.join(","),
                topic,
            });
        }
        refuse_if_active(&c, &k, &group)?;
        let ctx = Ctx::new(&k, "reset offsets of", "consumer group", &group);
        let offsets = committed(&k, &group, &parts)?;
        let marks = watermarks(&c, &parts).map_err(|e| ctx.kafka(e))?;
        let at_time = match to {
            ResetTo::Datetime(t) => {
                let ms = t
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let mut tpl = TopicPartitionList::with_capacity(parts.len());
                for (t, p) in &parts {
                    tpl.add_partition_offset(t, *p, Offset::Offset(ms))
                        .map_err(|e| ctx.kafka(e))?;
                }
                let res = c
                    .offsets_for_times(tpl, TIMEOUT)
                    .map_err(|e| ctx.kafka(e))?;
                res.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) if o >= 0 => {
                            Some(((e.topic().to_string(), e.partition()), o))
                        }
                        _ => None,
                    })
                    .collect()
            }
            _ => HashMap::new(),
        };
        let mut changes: Vec<OffsetChange> = parts
            .iter()
            .map(|key| {
                let (low, high) = marks.get(key).copied().unwrap_or((0, 0));
                let current = offsets.get(key).copied();
                let new = match to {
                    ResetTo::Earliest => low,
                    ResetTo::Latest => high,
                    ResetTo::Datetime(_) => at_time.get(key).copied().unwrap_or(high),
                    ResetTo::Offset(o) => o,
                    ResetTo::ShiftBy(n) => current.unwrap_or(low).saturating_add(n),
                }
                .clamp(low, high.max(low));
                OffsetChange {
                    topic: key.0.clone(),
                    partition: key.1,
                    current,
                    new,
                    lag_after: (high - new).max(0),
                }
            })
            .collect();
        changes.sort_by_key(|ch| ch.partition);
        if execute {
            // Checked again right before: a consumer that joined meanwhile would overwrite it.
            refuse_if_active(&c, &k, &group)?;
            let g = consumer(&k, Some(&group))?;
            let mut tpl = TopicPartitionList::with_capacity(changes.len());
            for ch in &changes {
                tpl.add_partition_offset(&ch.topic, ch.partition, Offset::Offset(ch.new))
                    .map_err(|e| ctx.kafka(e))?;
            }
            g.assign(&tpl).map_err(|e| ctx.kafka(e))?;
            g.commit(&tpl, CommitMode::Sync).map_err(|e| ctx.kafka(e))?;
            let _ = g.unassign();
        }
        Ok(changes)
    })
    .await?
}

fn refuse_if_active(
    c: &BaseConsumer<QuietContext>,
    k: &KafkaConfig,
    group: &str,
) -> Result<(), AdminError> {
    if let Some((_, _, _, members)) = group_info(c, k, group)? {
        if !members.is_empty() {
            return Err(AdminError::GroupActive {
                brokers: k.brokers.join(","),
                group: group.to_string(),
                members: members.len(),
                clients: members
                    .iter()
                    .map(|m| format!("{} at {}", m.client_id, m.host))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(())
}

/// Deletes `group` and its committed offsets. Refused while it has members.
pub async fn delete_group(k: &KafkaConfig, group: &str) -> Result<(), AdminError> {
    let kc = k.clone();
    let g = group.to_string();
    tokio::task::spawn_blocking(move || {
        let c = consumer(&kc, None)?;
        metadata(&c, &kc, None)?;
        refuse_if_active(&c, &kc, &g)
    })
    .await??;
    let ctx = Ctx::new(k, "delete", "consumer group", group);
    let admin = admin_client(k)?;
    let res = admin
        .delete_groups(&[group], &options())
        .await
        .map_err(|e| ctx.kafka(e))?;
    for r in res {
        if let Err((_, code)) = r {
            return Err(ctx.code(code));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(version: i16, topics: &[(&str, &[i32])], user_data: &[u8]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((user_data.len() as i32).to_be_bytes());
        b.extend(user_data);
        b
    }

    #[test]
    fn member_assignment_is_decoded() {
        let bytes = assignment(3, &[("ticks", &[2, 0]), ("a.b", &[1])], b"xy");
        assert_eq!(
            parse_member_assignment(&bytes).unwrap(),
            vec![
                TopicPartitions {
                    topic: "a.b".into(),
                    partitions: vec![1]
                },
                TopicPartitions {
                    topic: "ticks".into(),
                    partitions: vec![0, 2]
                },
            ]
        );
        assert_eq!(parse_member_assignment(&[]).unwrap(), vec![]);
        // Cut short: not an assignment.
        assert_eq!(parse_member_assignment(&bytes[..9]), None);
        // A partition count larger than the bytes: refused, not allocated.
        let mut bad = assignment(0, &[("t", &[])], b"");
        bad[9..13].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(parse_member_assignment(&bad), None);
    }
}
