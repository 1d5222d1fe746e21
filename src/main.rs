//! The `ridepulse` command line: a thin layer that loads configuration, dispatches to the
//! library, and turns errors into one clear message and a non-zero exit.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use ridepulse::config::Config;
use ridepulse::kafka::{plain_consumer, topics};
use ridepulse::simulator::{self, cities, world};

/// jemalloc: faster than glibc's malloc for the dataflows' many small allocations, and it
/// returns freed memory, so RSS follows what is live (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's figures for `/metrics` (`ridepulse_heap_*`): its statistics are cached until
/// the epoch advances, so each reading advances it first.
fn jemalloc_heap() -> Option<ridepulse::metrics::HeapFigures> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(ridepulse::metrics::HeapFigures {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

#[derive(Parser)]
#[command(
    name = "ridepulse",
    version,
    about = "Real-time ride analytics: Kafka → timely dataflow → ClickHouse"
)]
struct Cli {
    /// TOML configuration file (see config/ridepulse.example.toml).
    #[arg(long, global = true, env = "RIDEPULSE_CONFIG")]
    config: Option<PathBuf>,
    /// Override one key, e.g. `--set kafka.brokers=10.0.0.5:9092` (repeatable).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Shorthand for `--set kafka.brokers=...`.
    #[arg(long, global = true)]
    brokers: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or list SPEC §1's topics.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Produce realistic ride events (and driver locations) to Kafka or a file.
    Simulate(SimulateArgs),
    /// Read a topic's whole backlog with a plain consumer and report what it holds.
    Consume(ConsumeArgs),
    /// Run the city-metrics job: ride-events → windows → ClickHouse and analytics-aggregated.
    Run(RunArgs),
    /// Create the ClickHouse database and tables (SPEC §4) for the server's version.
    Migrate(MigrateArgs),
    /// Run SQL against ClickHouse and print the result (e.g. `--file sql/rides_per_minute.sql`).
    Query(QueryArgs),
    /// Serve the live dashboard (default http://127.0.0.1:3000/).
    Dashboard {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: String,
        /// Minutes of history in the charts.
        #[arg(long, default_value_t = 60)]
        minutes: u32,
        /// Cancellation rate (%) above which a city is highlighted.
        #[arg(long, default_value_t = 30.0)]
        threshold: f64,
        /// Pressure (waiting riders per available driver) above which a city is highlighted
        /// in the supply-and-demand section (the Grafana alert's threshold).
        #[arg(long, default_value_t = 2.0)]
        pressure_threshold: f64,
    },
    /// Benchmarks: engine, kafka, freshness, soak, broker-stress (see scripts/bench).
    Bench(ridepulse::bench::BenchOptions),
    /// Jobs per city set on the processes of workers.toml, supervised and restarted.
    Job {
        #[command(subcommand)]
        action: JobAction,
    },
}

#[derive(Subcommand)]
enum JobAction {
    /// Start a job for a set of cities (returns once its processes are connected).
    Submit {
        /// The job's name (lowercase letters, digits, - and _).
        #[arg(long)]
        name: String,
        /// Its cities, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "all_cities",
            conflicts_with = "all_cities"
        )]
        cities: Vec<String>,
        /// Every city.
        #[arg(long)]
        all_cities: bool,
        /// The layout file (default: the `cluster.layout` key, `workers.toml`).
        #[arg(long)]
        workers: Option<PathBuf>,
        /// How long to wait for every process to connect.
        #[arg(long, value_parser = world::parse_duration, default_value = "60s")]
        wait: Duration,
    },
    /// Every job: cities, processes, state, restarts, watermark, consumer lag.
    List,
    /// Print a job's process logs.
    Logs {
        /// The job.
        name: String,
        /// Lines from the end of each log.
        #[arg(long, default_value_t = 40)]
        lines: usize,
    },
    /// Stop a job and all its processes.
    Stop {
        /// The job.
        name: String,
    },
    /// (internal) Run a job's supervisor; `submit` starts it.
    #[command(hide = true)]
    Supervise {
        /// The job.
        name: String,
    },
}

#[derive(Args)]
struct MigrateArgs {
    /// Print the statements instead of running them.
    #[arg(long)]
    print: bool,
    /// With --print: the server version to write DDL for (default: ask the server).
    #[arg(long, requires = "print")]
    server_version: Option<String>,
}

#[derive(Args)]
struct QueryArgs {
    /// The SQL (or use --file).
    #[arg(conflicts_with = "file", required_unless_present = "file")]
    sql: Option<String>,
    /// A file holding one SQL statement.
    #[arg(long)]
    file: Option<PathBuf>,
    /// ClickHouse output format.
    #[arg(long, default_value = "PrettyCompactMonoBlock")]
    format: String,
}

#[derive(Args)]
struct RunArgs {
    /// Worker threads in one process (a number), or a cluster layout file (`workers.toml`)
    /// of which this is process --process.
    #[arg(short = 'w', long, default_value = "1", value_parser = parse_workers)]
    workers: Workers,
    /// With a layout: which of its processes this is (0-based).
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// With a layout: use the processes of this job's `[jobs.NAME]` override, if it has one.
    #[arg(long)]
    layout_job: Option<String>,
    /// Only these cities (comma-separated); default: every city.
    #[arg(long, value_delimiter = ',')]
    cities: Vec<String>,
    /// Do not write malformed messages to the dead-letter topic (another job does).
    #[arg(long)]
    no_dead_letters: bool,
    /// Read JSON-lines files of the ride-events format instead of Kafka (repeatable, read in
    /// order; always to their end, like --until-end).
    #[arg(long = "from-file", value_name = "PATH")]
    from_file: Vec<PathBuf>,
    /// Read JSON-lines files of the driver-locations format instead of Kafka (repeatable;
    /// with --from-file or alone, like it a file run to the end).
    #[arg(long = "locations-file", value_name = "PATH")]
    locations_file: Vec<PathBuf>,
    /// Read up to the end offsets that exist at start, emit every window's final row, exit 0.
    #[arg(long)]
    until_end: bool,
    /// Also print every emitted row as a JSON line on stdout.
    #[arg(long)]
    print: bool,
    /// With --print: only final rows (is_final = 1).
    #[arg(long, requires = "print")]
    final_only: bool,
    /// Consumer group; checkpoints and committed offsets are kept per group.
    #[arg(long, default_value = "ridepulse-city-metrics")]
    group: String,
    /// Ignore the group's checkpoints: read every retained message again (rows are
    /// upserted, so ClickHouse ends the same).
    #[arg(long)]
    from_beginning: bool,
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create every missing topic (a no-op when they all exist).
    Create,
    /// Show the topics, their partitions and how many messages they hold.
    List,
}

#[derive(Args)]
struct SimulateArgs {
    /// Ride events per minute (driver locations come on top).
    #[arg(long, default_value_t = 50_000.0)]
    rate: f64,
    /// How long to run (`60s`, `5m`, `1h`, or seconds).
    #[arg(long, value_parser = world::parse_duration, default_value = "60s", conflicts_with = "count")]
    duration: Duration,
    /// Stop after exactly this many ride events instead of after --duration.
    #[arg(long)]
    count: Option<u64>,
    /// Cities: a number N (the N most popular built-in ones) or a comma-separated list.
    #[arg(long)]
    cities: Option<String>,
    /// Seed for every random choice; the same seed and --start give the same events.
    #[arg(long)]
    seed: Option<u64>,
    /// Event time of the first event (ISO-8601); default: now.
    #[arg(long)]
    start: Option<String>,
    /// A demand surge, CITY:FACTOR:START:END, e.g. `bratislava:2:1m:4m` (repeatable).
    #[arg(long = "surge", value_parser = world::Surge::parse)]
    surges: Vec<world::Surge>,
    /// Drivers going offline, CITY:FRACTION:START:END: that share of the city's drivers
    /// (`0.6` or `60%`) between START and END from the start of the run (like --surge's),
    /// e.g. `bratislava:0.6:2m:6m` (repeatable).
    #[arg(long = "supply-drop", value_name = "CITY:FRACTION:START:END", value_parser = world::SupplyDrop::parse)]
    supply_drops: Vec<world::SupplyDrop>,
    /// Drivers across all cities; each reports its position every 5 s.
    #[arg(long, default_value_t = 2000)]
    drivers: usize,
    /// Write the ride events as JSON lines to this file instead of Kafka (not paced).
    #[arg(long, conflicts_with_all = ["replay", "replay_locations"])]
    out: Option<PathBuf>,
    /// With --out: also write the driver locations of the run, as JSON lines, to this file.
    #[arg(long, requires = "out")]
    locations_out: Option<PathBuf>,
    /// Produce the lines of an existing JSON-lines file into ride-events, as fast as possible.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Produce the lines of a driver-locations file (e.g. from --locations-out) into
    /// driver-locations keyed by driver_id, as fast as possible (after --replay, if both).
    #[arg(long)]
    replay_locations: Option<PathBuf>,
}

#[derive(Args)]
struct ConsumeArgs {
    /// The topic (default: the ride-events topic from the configuration).
    #[arg(long)]
    topic: Option<String>,
    /// Print the first N messages.
    #[arg(long, default_value_t = 0)]
    print: usize,
    /// Instead of the backlog, follow new messages for this long and report their delivery
    /// latency (producer create time → receipt): p50, p95, p99, max.
    #[arg(long, value_parser = world::parse_duration)]
    follow: Option<Duration>,
}

fn main() {
    ridepulse::telemetry::init();
    ridepulse::metrics::set_heap_probe(jemalloc_heap);
    if let Err(error) = run(Cli::parse()) {
        if let Some(fatal) = error.downcast_ref::<ridepulse::pipeline::JobFatal>() {
            // The supervisor reads this line and backs off instead of restarting in a loop.
            eprintln!("fatal: {fatal}");
            std::process::exit(ridepulse::pipeline::FATAL_EXIT_CODE);
        }
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut overrides = cli.overrides;
    if let Some(brokers) = cli.brokers {
        overrides.push(format!("kafka.brokers={brokers}"));
    }
    let config = Config::load(cli.config.as_deref(), std::env::vars(), &overrides)?;
    match cli.command {
        Command::Topics { action } => topics_command(&config, action)?,
        Command::Simulate(args) => simulate(&config, args)?,
        Command::Job { action } => job(&config, action)?,
        Command::Bench(options) => ridepulse::bench::run(&config, &options)?,
        Command::Dashboard {
            listen,
            minutes,
            threshold,
            pressure_threshold,
        } => ridepulse::dashboard::serve(
            &config,
            &ridepulse::dashboard::DashboardOptions {
                listen,
                minutes,
                threshold_pct: threshold,
                pressure_threshold,
            },
        )?,
        Command::Migrate(args) => migrate(&config, args)?,
        Command::Query(args) => {
            let sql = match (&args.sql, &args.file) {
                (Some(sql), _) => sql.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                (None, None) => unreachable!("clap requires one"),
            };
            let client = ridepulse::clickhouse::connect(&config.clickhouse);
            let text = ridepulse::clickhouse::block_on(ridepulse::clickhouse::query_text(
                &client,
                &config.clickhouse.url,
                sql.trim().trim_end_matches(';'),
                &args.format,
            ))?;
            print!("{text}");
        }
        Command::Run(args) => {
            let layout = match &args.workers {
                Workers::Threads(0) => bail!("-w/--workers must be at least 1"),
                Workers::Threads(n) => ridepulse::cluster::Layout::local(*n),
                Workers::Layout(path) => ridepulse::cluster::LayoutSet::load(path)?
                    .for_job(args.layout_job.as_deref())
                    .clone(),
            };
            if matches!(args.workers, Workers::Threads(_)) && args.process != 0 {
                bail!("--process needs a layout file: --workers workers.toml");
            }
            // Checked before anything connects anywhere.
            layout
                .timely_config(args.process)
                .map_err(anyhow::Error::msg)?;
            let options = ridepulse::pipeline::RunOptions {
                cities: ridepulse::jobs::parse_cities(&args.cities)?,
                dead_letters: !args.no_dead_letters,
                files: args.from_file.clone(),
                location_files: args.locations_file.clone(),
                process: args.process,
                layout,
                until_end: args.until_end
                    || !args.from_file.is_empty()
                    || !args.locations_file.is_empty(),
                print: args.print,
                final_only: args.final_only,
                group_id: args.group,
                from_beginning: args.from_beginning,
            };
            // stdout is line-buffered: a live run's rows show as they are emitted.
            let summary = ridepulse::pipeline::run(&config, &options, std::io::stdout())?;
            eprintln!("{summary}");
        }
        Command::Consume(args) => consume(&config, args)?,
    }
    Ok(())
}

/// `ridepulse topics create|list`: one line per topic of SPEC §1.
fn topics_command(config: &Config, action: TopicsAction) -> anyhow::Result<()> {
    match action {
        TopicsAction::Create => print!("{}", topics::create_report(&topics::create(config)?)),
        TopicsAction::List => print!(
            "{}",
            topics::list_report(&topics::contract_topics(config), &topics::list(config)?)
        ),
    }
    Ok(())
}

/// `ridepulse consume`: a topic's backlog (or, with --follow, its delivery latency) as one
/// `key=value` line.
fn consume(config: &Config, args: ConsumeArgs) -> anyhow::Result<()> {
    let topic = args
        .topic
        .unwrap_or_else(|| config.topics.ride_events.clone());
    if let Some(duration) = args.follow {
        let stats = plain_consumer::follow(&config.kafka.brokers, &topic, duration)?;
        println!("{}", stats.report(&topic));
        return Ok(());
    }
    let report = plain_consumer::inspect_backlog(
        &config.kafka.brokers,
        &topic,
        topic == config.topics.ride_events,
        args.print,
        |line| println!("{line}"),
    )?;
    println!("{report}");
    Ok(())
}

/// `ridepulse migrate [--print]`.
fn migrate(config: &Config, args: MigrateArgs) -> anyhow::Result<()> {
    use ridepulse::clickhouse::migration;
    if args.print {
        print!(
            "{}",
            migration::ddl_text(&config.clickhouse, args.server_version.as_deref())?
        );
    } else {
        println!("{}", migration::migrate(&config.clickhouse)?);
    }
    Ok(())
}

fn simulate(config: &Config, args: SimulateArgs) -> anyhow::Result<()> {
    if args.replay.is_some() || args.replay_locations.is_some() {
        use simulator::ReplayKind;
        let files = [
            (&args.replay, ReplayKind::Rides, &config.topics.ride_events),
            (
                &args.replay_locations,
                ReplayKind::Locations,
                &config.topics.driver_locations,
            ),
        ];
        for (path, kind, topic) in files {
            let Some(path) = path else { continue };
            let summary = simulator::replay_file(config, path, kind)?;
            println!("{}", summary.replay_report(path, topic));
        }
        return Ok(());
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of events per minute");
    }
    let cities = cities::resolve(args.cities.as_deref()).map_err(anyhow::Error::msg)?;
    for surge in &args.surges {
        if !cities.iter().any(|c| c.name == surge.city) {
            let names: Vec<&str> = cities.iter().map(|c| c.name).collect();
            bail!(
                "--surge: city `{}` is not simulated (cities: {})",
                surge.city,
                names.join(", ")
            );
        }
    }
    for drop in &args.supply_drops {
        if !cities.iter().any(|c| c.name == drop.city) {
            let names: Vec<&str> = cities.iter().map(|c| c.name).collect();
            bail!(
                "--supply-drop: city `{}` is not simulated (cities: {})",
                drop.city,
                names.join(", ")
            );
        }
    }
    let start_ms = match &args.start {
        Some(text) => dataflows::event::Timestamp::parse(text)
            .with_context(|| format!("--start `{text}`"))?
            .millis(),
        None => chrono::Utc::now().timestamp_millis(),
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let stop = match args.count {
        Some(n) => simulator::Stop::Count(n),
        None => simulator::Stop::After(args.duration),
    };
    let world = world::WorldConfig {
        seed,
        rate_per_minute: args.rate,
        cities,
        drivers: args.drivers,
        surges: args.surges,
        supply_drops: args.supply_drops,
        start_ms,
    };
    eprintln!(
        "simulating with --seed {seed} --start {} --rate {}",
        dataflows::event::Timestamp(start_ms),
        args.rate
    );
    let summary = match &args.out {
        Some(path) => simulator::to_file(world, stop, path, args.locations_out.as_deref())?,
        None => simulator::to_kafka(config, world, stop)?,
    };
    let target = match (&args.out, &args.locations_out) {
        (Some(path), Some(locations)) => {
            format!("{} (locations to {})", path.display(), locations.display())
        }
        (Some(path), None) => path.display().to_string(),
        (None, _) => config.topics.ride_events.clone(),
    };
    println!("{}", summary.report(&target));
    Ok(())
}

/// `--workers`: a thread count or a layout file.
#[derive(Clone, Debug)]
enum Workers {
    Threads(usize),
    Layout(PathBuf),
}

fn parse_workers(text: &str) -> Result<Workers, String> {
    match text.parse::<usize>() {
        Ok(n) => Ok(Workers::Threads(n)),
        Err(_) if text.ends_with(".toml") || std::path::Path::new(text).exists() => {
            Ok(Workers::Layout(PathBuf::from(text)))
        }
        Err(_) => Err(format!(
            "`{text}` is neither a number of worker threads nor a layout file (e.g. workers.toml)"
        )),
    }
}

fn job(config: &Config, action: JobAction) -> anyhow::Result<()> {
    use ridepulse::jobs::{self, JobDir};
    match action {
        JobAction::Submit {
            name,
            cities,
            all_cities,
            workers,
            wait,
        } => {
            let cities = if all_cities {
                None
            } else {
                jobs::parse_cities(&cities)?
            };
            let request = jobs::SubmitRequest {
                name,
                cities,
                layout: workers,
                wait,
            };
            print!("{}", jobs::submit(config, &request)?.submitted_text());
        }
        JobAction::List => print!("{}", jobs::status::table(&jobs::status::list(config))),
        JobAction::Logs { name, lines } => {
            let dir = JobDir::new(&config.cluster.state_dir(), &name);
            let spec = dir
                .spec()
                .with_context(|| format!("no job named `{name}`"))?;
            print!("{}", dir.logs_tail(&spec, lines));
        }
        JobAction::Stop { name } => {
            jobs::stop(config, &name, Duration::from_secs(30))?;
            println!("job {name} stopped");
        }
        JobAction::Supervise { name } => {
            jobs::supervisor::supervise(&JobDir::new(&config.cluster.state_dir(), &name))?
        }
    }
    Ok(())
}
