//! The load generator's flags (clap), their defaults and their bounds.
//!
//! Every bound is checked before anything joins: a bad value is clap's
//! error message and exit status 2, never a half-started run.

use std::ffi::OsString;

use clap::builder::RangedU64ValueParser;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

/// The server when no `--url` or `--edges` is given.
const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Most listeners (the open-file limit is checked too).
const MAX_LISTENERS: usize = 20_000;

/// Most listeners with a thread each (`--threads 0`, decoding listeners).
const MAX_THREADED: usize = 5_000;

/// Most speakers (each has a tone of its own, and a thread).
const MAX_SPEAKERS: usize = 16;

/// Most servers (`--url`, `--edges`): a cluster on one machine has far fewer.
const MAX_URLS: usize = 64;

/// Most measured processes (`--pid`): each is read from /proc twice a step.
const MAX_PIDS: usize = 64;

/// Most steps (`--steps`): each measures for `--seconds`.
const MAX_STEPS: usize = 64;

/// Most churning listeners joining per second (`--churn`).
const MAX_CHURN_PER_SECOND: f64 = 50.0;

/// Most members that never read their WebSocket (`--idle-ws`).
const MAX_IDLE_WS: usize = 64;

/// How speakers talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Pattern {
    /// All the time: 50 packets/s each.
    Continuous,
    /// Talk spurts and pauses of exponential length (1.0 s and 1.5 s on
    /// average), Opus DTX in the pauses.
    Conversation,
}

impl Pattern {
    /// Its flag value, which the report repeats.
    pub(crate) fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

/// Listener counts to measure at, in turn (`--steps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Steps(pub(crate) Vec<usize>);

/// Load generator: real WebRTC speakers and listeners (str0m, real Opus)
/// joining running sfu-servers over their WebSocket protocol; prints a JSON
/// report (one line per step with --steps).
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", args_override_self = true)]
pub(crate) struct Args {
    /// A server to join (repeat for several). Speakers join the first server,
    /// listeners are spread round-robin over all
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    url: Vec<String>,
    /// More servers, comma separated; taken with --url in command-line order
    #[arg(long, value_name = "URL,URL,...")]
    edges: Vec<String>,
    /// Every server of --url and --edges in command-line order (the default
    /// --url without any); listener `i` joins `urls[i % urls.len()]`.
    #[arg(skip)]
    pub(crate) urls: Vec<String>,
    /// The address the members' sockets bind to (their ICE host
    /// candidate): servers in other network namespaces need one they can
    /// reach
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub(crate) bind: std::net::IpAddr,
    /// A join token every member sends (a server with an auth secret
    /// admits no member without one); prefer LOADGEN_TOKEN
    #[arg(
        long,
        value_name = "JWT",
        env = "LOADGEN_TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
    /// The channel everyone joins
    #[arg(long, value_name = "C", default_value = "load")]
    pub(crate) channel: String,
    /// Speakers, each sending a tone of its own (at most 16)
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = RangedU64ValueParser::<usize>::new().range(..=MAX_SPEAKERS as u64))]
    pub(crate) speakers: usize,
    /// Listeners (at most 20000; the last step with --steps)
    #[arg(long, value_name = "M", default_value_t = 20,
          value_parser = RangedU64ValueParser::<usize>::new().range(..=MAX_LISTENERS as u64))]
    pub(crate) listeners: usize,
    /// Length of each measurement window in seconds (1 to 3600)
    #[arg(long, value_name = "S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) seconds: u64,
    /// Most seconds a join may take, and then all listeners' first audio (1 to 600)
    #[arg(long, value_name = "S", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub(crate) join_timeout: u64,
    /// How speakers talk
    #[arg(long, value_enum, default_value_t = Pattern::Continuous)]
    pub(crate) pattern: Pattern,
    /// Seed of the conversation schedules: a seed gives each speaker the same
    /// schedule on every run
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) seed: u64,
    /// Conversation speakers send every frame (no Opus DTX in pauses)
    #[arg(long = "no-dtx", action = ArgAction::SetFalse)]
    pub(crate) dtx: bool,
    /// Threads for the count-only listeners' tasks (at most 64); 0: a thread per listener
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(..=64))]
    pub(crate) threads: usize,
    /// Count-only listeners give media to str0m, which decrypts SRTP (else
    /// they read RTP headers only)
    #[arg(long)]
    pub(crate) full_srtp: bool,
    /// Joins in flight at once (1 to 256)
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub(crate) join_parallel: usize,
    /// A process whose CPU and memory are measured, labelled NAME (else its
    /// pid); repeat for several
    #[arg(long = "pid", value_name = "[NAME=]PID", value_parser = parse_pid)]
    pub(crate) pids: Vec<(String, u32)>,
    /// Every listener decodes and is checked to hear exactly the speakers
    /// (a thread each)
    #[arg(long)]
    pub(crate) decode: bool,
    /// Every Nth listener decodes and is checked (a thread each); the others
    /// only count packets
    #[arg(long, value_name = "N",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) decode_every: Option<usize>,
    /// Increasing listener counts to measure at in turn, one JSON line each
    /// (e.g. 500,1000,2000); sets --listeners to the last
    #[arg(long, value_name = "N,N,...", value_parser = parse_steps)]
    pub(crate) steps: Option<Steps>,
    /// With --steps: stop after a step with more loss than this (0 to 1)
    #[arg(long, value_name = "F", default_value_t = 1.0, value_parser = parse_fraction)]
    pub(crate) stop_loss: f64,
    /// With --steps: stop after a step where the --pid processes together
    /// used more cores than this
    #[arg(long, value_name = "CORES", default_value_t = f64::INFINITY,
          value_parser = parse_positive)]
    pub(crate) stop_cpu: f64,
    /// Churn: this many more listeners a second (0 to 50) join from the end
    /// of the first step's joins on, stay --churn-stay seconds and leave
    /// (every other one without a word); counted apart from --listeners
    #[arg(long, value_name = "PER_SEC", default_value_t = 0.0, value_parser = parse_churn)]
    pub(crate) churn: f64,
    /// Seconds each churning listener stays (1 to 600)
    #[arg(long, value_name = "S", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub(crate) churn_stay: u64,
    /// Members (at most 64, listeners, http:// servers only) that join, then
    /// never read their WebSocket again, from the end of the first step's
    /// joins to the end
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = RangedU64ValueParser::<usize>::new().range(..=MAX_IDLE_WS as u64))]
    pub(crate) idle_ws: usize,
}

impl Args {
    /// Whether listener `i` decodes what it hears and is checked.
    pub(crate) fn decodes(&self, i: usize) -> bool {
        self.decode || self.decode_every.is_some_and(|n| i.is_multiple_of(n))
    }

    /// Whether speakers use Opus DTX (only conversation pauses have any).
    pub(crate) fn uses_dtx(&self) -> bool {
        self.dtx && self.pattern == Pattern::Conversation
    }

    /// The listener count of each step: `--steps`, or just `--listeners`.
    pub(crate) fn step_targets(&self) -> Vec<usize> {
        self.steps
            .as_ref()
            .map_or_else(|| vec![self.listeners], |s| s.0.clone())
    }

    /// Listeners that get a thread of their own.
    fn threaded_listeners(&self) -> usize {
        if self.threads == 0 || self.decode {
            self.listeners
        } else {
            self.decode_every.map_or(0, |n| self.listeners.div_ceil(n))
        }
    }

    /// Churning listeners there can be at once: those staying, and those
    /// whose join may still be under way.
    pub(crate) fn max_churners(&self) -> usize {
        (self.churn * (self.churn_stay + self.join_timeout) as f64).ceil() as usize
    }

    /// The bounds that span flags (each flag's own range is clap's).
    fn check_bounds(&self) -> Result<(), String> {
        if self.idle_ws > 0 && !self.urls[0].starts_with("http://") {
            return Err("--idle-ws needs an http:// server (the first --url)".into());
        }
        if self.urls.len() > MAX_URLS {
            return Err(format!("at most {MAX_URLS} URLs"));
        }
        if self.pids.len() > MAX_PIDS {
            return Err(format!("at most {MAX_PIDS} --pid"));
        }
        if self.threaded_listeners() > MAX_THREADED {
            return Err(format!(
                "at most {MAX_THREADED} listeners with a thread each (decoding, or --threads 0)"
            ));
        }
        Ok(())
    }
}

/// Parses the command line (`argv[0]` first), fills in what follows from
/// it and checks the bounds. The error is clap's: `.exit()` prints it (or
/// the help) and exits with its status.
pub(crate) fn parse_args<I, T>(argv: I) -> Result<Args, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = Args::command();
    let matches = cmd.try_get_matches_from_mut(argv)?;
    let mut a = Args::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
    a.urls = servers_in_order(&matches);
    if a.urls.is_empty() {
        // Neither flag named a server: `url` holds its default.
        a.urls = a.url.clone();
    }
    if let Some(&last) = a.steps.as_ref().and_then(|s| s.0.last()) {
        a.listeners = last;
    }
    a.check_bounds()
        .map_err(|e| cmd.error(ErrorKind::ValueValidation, e))?;
    Ok(a)
}

/// The values of `--url` and `--edges` (split at commas) given on the
/// command line, in the order they came: `--edges A,B --url C` has its
/// speakers on A.
fn servers_in_order(m: &ArgMatches) -> Vec<String> {
    let mut flagged: Vec<(usize, &String, bool)> = Vec::new();
    for (id, is_list) in [("url", false), ("edges", true)] {
        if m.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        if let (Some(at), Some(values)) = (m.indices_of(id), m.get_many::<String>(id)) {
            flagged.extend(at.zip(values).map(|(i, v)| (i, v, is_list)));
        }
    }
    flagged.sort_by_key(|(i, ..)| *i);
    let mut urls = Vec::new();
    for (_, v, is_list) in flagged {
        if is_list {
            let listed = v.split(',').map(str::trim).filter(|u| !u.is_empty());
            urls.extend(listed.map(String::from));
        } else {
            urls.push(v.clone());
        }
    }
    urls
}

/// `--pid NAME=PID` or `--pid PID` (labelled with the pid itself).
fn parse_pid(v: &str) -> Result<(String, u32), String> {
    let (label, pid) = v.split_once('=').unwrap_or((v, v));
    let pid = pid.parse().map_err(|e| format!("{e}"))?;
    Ok((label.to_owned(), pid))
}

/// `--steps 100,200,400`: increasing listener counts, each within bounds.
fn parse_steps(v: &str) -> Result<Steps, String> {
    let steps: Vec<usize> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| format!("{s}: {e}")))
        .collect::<Result<_, String>>()?;
    if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err("increasing listener counts, e.g. 100,200,400".into());
    }
    if steps.len() > MAX_STEPS {
        return Err(format!("at most {MAX_STEPS} steps"));
    }
    if steps.iter().any(|&n| n > MAX_LISTENERS) {
        return Err(format!("at most {MAX_LISTENERS} listeners"));
    }
    Ok(Steps(steps))
}

/// A number from 0 to 1.
fn parse_fraction(v: &str) -> Result<f64, String> {
    let f: f64 = v.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err("must be from 0 to 1".into())
    }
}

/// Listeners a second, from 0 to [`MAX_CHURN_PER_SECOND`].
fn parse_churn(v: &str) -> Result<f64, String> {
    let f: f64 = v.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=MAX_CHURN_PER_SECOND).contains(&f) {
        Ok(f)
    } else {
        Err(format!("must be from 0 to {MAX_CHURN_PER_SECOND}"))
    }
}

/// A number above 0 (`inf` allowed).
fn parse_positive(v: &str) -> Result<f64, String> {
    let f: f64 = v.parse().map_err(|e| format!("{e}"))?;
    if f > 0.0 {
        Ok(f)
    } else {
        Err("must be above 0".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, clap::Error> {
        parse_args(std::iter::once("loadgen").chain(s.split_whitespace()))
    }

    #[test]
    fn defaults() {
        let d = args("").unwrap();
        assert_eq!(d.urls, [DEFAULT_URL]);
        assert_eq!(d.channel, "load");
        assert_eq!(
            (d.speakers, d.listeners, d.seconds, d.join_timeout),
            (3, 20, 10, 20)
        );
        assert_eq!(d.pattern, Pattern::Continuous);
        assert_eq!((d.seed, d.threads, d.join_parallel), (1, 1, 1));
        assert!(d.dtx && !d.full_srtp && !d.decode && d.decode_every.is_none());
        assert!(d.pids.is_empty() && d.steps.is_none());
        assert_eq!((d.stop_loss, d.stop_cpu), (1.0, f64::INFINITY));
        assert_eq!((d.churn, d.churn_stay, d.idle_ws), (0.0, 5, 0));
        assert_eq!(d.max_churners(), 0);
        assert_eq!(d.step_targets(), [20]);
        assert!(!d.uses_dtx() && !d.decodes(0));
    }

    #[test]
    fn flags_parse() {
        let a = args(
            "--url http://x:1 --listeners 2000 --pattern conversation --seed 9 --threads 2 \
             --join-parallel 8 --decode-every 100 --channel c --speakers 5 --seconds 7 \
             --join-timeout 30 --full-srtp --pid 42 --pid core=7",
        )
        .unwrap();
        assert_eq!(a.urls, ["http://x:1"]);
        assert_eq!(a.pattern, Pattern::Conversation);
        assert_eq!(a.pattern.name(), "conversation");
        assert_eq!(
            (a.seed, a.threads, a.join_parallel, a.listeners),
            (9, 2, 8, 2000)
        );
        assert_eq!((a.speakers, a.seconds, a.join_timeout), (5, 7, 30));
        assert_eq!(a.channel, "c");
        assert!(a.dtx && a.uses_dtx() && a.full_srtp);
        assert_eq!(a.pids, [("42".to_string(), 42), ("core".to_string(), 7)]);
        assert!(a.decodes(0) && a.decodes(200) && !a.decodes(1));
        assert!(!args("--pattern conversation --no-dtx").unwrap().uses_dtx());
        assert!(args("--decode").unwrap().decodes(3));
        let c = args("--churn 2.5 --churn-stay 4 --idle-ws 3 --join-timeout 6").unwrap();
        assert_eq!((c.churn, c.churn_stay, c.idle_ws), (2.5, 4, 3));
        assert_eq!(c.max_churners(), 25);
        // A flag given twice: the last one counts, as before clap.
        assert_eq!(args("--seconds 3 --seconds 4").unwrap().seconds, 4);
    }

    #[test]
    fn servers_keep_command_line_order() {
        let a = args("--edges http://e1,,http://e2 --url http://c --edges http://e3").unwrap();
        assert_eq!(a.urls, ["http://e1", "http://e2", "http://c", "http://e3"]);
        let a = args("--url http://c --edges http://e1").unwrap();
        assert_eq!(a.urls, ["http://c", "http://e1"]);
        let a = parse_args(["loadgen", "--edges", " http://e1 , http://e2"]).unwrap();
        assert_eq!(a.urls, ["http://e1", "http://e2"]);
        assert_eq!(args("--edges ,").unwrap().urls, [DEFAULT_URL]);
    }

    #[test]
    fn steps_set_the_listeners() {
        let s =
            args("--steps 100,200,400 --listeners 5 --stop-loss 0.001 --stop-cpu 0.95").unwrap();
        assert_eq!(s.steps, Some(Steps(vec![100, 200, 400])));
        assert_eq!((s.step_targets(), s.listeners), (vec![100, 200, 400], 400));
        assert_eq!((s.stop_loss, s.stop_cpu), (0.001, 0.95));
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "--pattern chatty",
            "--listeners 20001",
            "--threads 0 --listeners 6000",
            "--decode --listeners 6000",
            "--decode-every 1 --listeners 6000",
            "--seconds 0",
            "--seconds 3601",
            "--join-timeout 0",
            "--join-parallel 0",
            "--join-parallel 257",
            "--threads 65",
            "--speakers 17",
            "--speakers x",
            "--seed",
            "--bogus",
            "--decode-every 0",
            "--pid x",
            "--pid a=",
            "--steps 200,100",
            "--steps ,",
            "--steps 1,x",
            "--steps 100,30000",
            "--stop-loss 2",
            "--stop-loss=-0.1",
            "--stop-cpu 0",
            "--stop-cpu NaN",
            "--churn -1",
            "--churn 51",
            "--churn NaN",
            "--churn-stay 0",
            "--churn-stay 601",
            "--idle-ws 65",
            "--idle-ws 1 --url https://x",
            "positional",
        ] {
            let e = args(bad).err().unwrap_or_else(|| panic!("accepted {bad}"));
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
        let too_many_steps: Vec<String> = (1..=65).map(|n| n.to_string()).collect();
        assert!(args(&format!("--steps {}", too_many_steps.join(","))).is_err());
        let urls = "--url http://x ".repeat(65);
        assert!(args(&urls).is_err());
        assert!(args("--threads 1 --listeners 20000").is_ok());
        assert!(args("--decode-every 4 --listeners 20000").is_ok());
        assert!(args("--stop-cpu inf --stop-loss 0").is_ok());
    }

    #[test]
    fn the_documented_invocations_parse() {
        // As README.md, BENCHMARKS.md, scripts/bench-node.sh,
        // scripts/cluster-demo.sh and scripts/soak.sh call it.
        for line in [
            "--url http://127.0.0.1:8080 --speakers 3 --listeners 1000 --seconds 10 --pattern conversation",
            "--url http://127.0.0.1:18501 --speakers 3 --listeners 1000 --seconds 12 --pid server=41",
            "--url http://127.0.0.1:18100 --speakers 3 --listeners 50 --seconds 8 --pid 41",
            "--url http://127.0.0.1:18300 --speakers 3 --listeners 1000 --seconds 10 \
             --pattern conversation --join-parallel 4 --decode-every 100 --pid server=41",
            "--url http://127.0.0.1:18200 --speakers 3 --listeners 200 --seconds 10 --join-parallel 4 \
             --pid server=41 --threads 0 --full-srtp",
            "--url http://127.0.0.1:18500 --speakers 3 --pattern continuous --steps 100,200,400 \
             --seconds 8 --threads 1 --join-parallel 4 --stop-loss 0.001 --stop-cpu 0.95 \
             --decode-every 50 --pid server=41",
            "--edges http://127.0.0.1:18601,http://127.0.0.1:18602 --speakers 3 --listeners 250 \
             --seconds 10 --decode-every 50 --pid core=40 --pid edge1=41 --pid edge2=42",
            "--url http://127.0.0.1:18700 --speakers 3 --listeners 20 --seconds 1800 \
             --pattern conversation --decode-every 10 --join-parallel 4 --churn 2 --churn-stay 5 \
             --idle-ws 1 --pid server=41",
        ] {
            let a = args(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(a.urls[0].starts_with("http://127.0.0.1:"), "{line}");
        }
    }

    #[test]
    fn help_is_not_an_error() {
        let e = args("--help").unwrap_err();
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::DisplayHelp, 0));
    }
}
