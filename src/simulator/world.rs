//! A deterministic model of a ride service: riders request rides, drivers accept, pick up,
//! drop off, and some rides are cancelled; every driver reports its position every 5 s.
//!
//! The world advances in 100 ms ticks of simulated time. Each tick has an exact quota of
//! ride events (`--rate` spread evenly, raised by active surges): new requests arrive at the
//! steady state's rate for the current demand, and lifecycle steps that are due (oldest
//! first, or up to 4.9 s early when the tick is short) fill the rest, so a run of N seconds
//! at R events/min yields exactly N·R/60 ride events (with surges, their extra on top). Before the first emitted tick the world is
//! run silently for [`PREWARM`] so that rides are already in every stage of their life: the
//! mix of event types is the steady state's from the first second.
//!
//! Supply: a ride is accepted only by a driver with room for it. Each simulated driver
//! stands for a share of the fleet (2,000 drivers carry 50,000 ride events a minute), so it
//! holds up to its city's *capacity* of rides at once, sized when the world is made so that
//! the city's online drivers cover its steady-state demand with [`HEADROOM`] to spare. A
//! driver reports `available` while it has room and `on_trip` when it is full. When no
//! driver of the city has room (a `--surge` beyond the headroom, a `--supply-drop` taking
//! drivers offline) the request waits, retried every [`RETRY_MS`], and a rider who has waited
//! longer than their patience (2 to 8 minutes) cancels: fewer available drivers mean more
//! waiting riders, longer waits and more cancellations, which is what SPEC §5 measures. In a
//! shortage fewer ride events happen than `--rate` asks; at most a minute of that shortfall
//! is made up afterwards.
//!
//! Same seed, cities, rate, surges, supply drops and start time → the same events, byte for
//! byte; the world uses one seeded ChaCha stream and no hash maps.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use dataflows::event::{DriverLocation, DriverStatus, EventType, GeoPoint, RideEvent, Timestamp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::cities::City;
pub use super::supply_drop::SupplyDrop;

/// Simulated time per tick.
pub const TICK_MS: i64 = 100;
/// Every driver reports its position this often.
pub const LOCATION_EVERY_MS: i64 = 5_000;
/// How long the world runs silently before the first emitted tick.
pub const PREWARM: Duration = Duration::from_secs(60 * 60);

/// Share of rides that complete; the rest are cancelled.
const P_COMPLETE: f64 = 0.85;
/// Of the cancelled rides, the share called off before a driver accepted.
const P_CANCEL_BEFORE_ACCEPT: f64 = 0.4;
/// Ride events per ride on average: 4 for a completed ride, 2 or 3 for a cancelled one.
const EVENTS_PER_RIDE: f64 = P_COMPLETE * 4.0
    + (1.0 - P_COMPLETE) * (P_CANCEL_BEFORE_ACCEPT * 2.0 + (1.0 - P_CANCEL_BEFORE_ACCEPT) * 3.0);
/// How far ahead a lifecycle step may be pulled to fill a tick's quota (less than the
/// shortest gap between two steps of one ride, 5 s).
const PULL_AHEAD_MS: i64 = 4_900;
/// Drivers that stay offline (1 in N).
const OFFLINE_ONE_IN: usize = 20;
/// Spare driver capacity over the steady state's demand: a surge up to this factor is
/// absorbed, beyond it riders wait.
pub const HEADROOM: f64 = 1.25;
/// Seconds a ride holds its driver on average: accepted → started (60–480 s) plus the trip
/// (1–15 km, squared skew, 90–180 s/km) for completed rides, accepted → cancelled (30–300 s)
/// for the ones cancelled after acceptance.
const MEAN_HOLD_S: f64 = P_COMPLETE * (270.0 + (1.0 + 14.0 / 3.0) * 135.0)
    + (1.0 - P_COMPLETE) * (1.0 - P_CANCEL_BEFORE_ACCEPT) * 165.0;
/// A request no driver could take is offered again this much later (no sooner than the
/// pull-ahead window, so a retry is never pulled into the tick that just failed).
pub const RETRY_MS: i64 = 5_000;

/// A temporary rise in demand in one city (`--surge CITY:FACTOR:START:END`).
#[derive(Clone, Debug, PartialEq)]
pub struct Surge {
    /// The city.
    pub city: String,
    /// Demand multiplier while it lasts (2 doubles the requests).
    pub factor: f64,
    /// When it begins, from the start of the run.
    pub start: Duration,
    /// When it ends, from the start of the run.
    pub end: Duration,
}

impl Surge {
    /// Parses `CITY:FACTOR:START:END`, with START and END as durations from the start of the
    /// run (`90s`, `2m`, or plain seconds), e.g. `bratislava:2:1m:4m`.
    pub fn parse(text: &str) -> Result<Surge, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let [city, factor, start, end] = parts[..] else {
            return Err(format!(
                "--surge `{text}`: expected CITY:FACTOR:START:END, e.g. bratislava:2:1m:4m"
            ));
        };
        let factor: f64 = factor
            .parse()
            .ok()
            .filter(|f: &f64| f.is_finite() && *f > 0.0)
            .ok_or_else(|| {
                format!("--surge `{text}`: FACTOR `{factor}` must be a positive number")
            })?;
        let duration = |what: &str, value: &str| {
            parse_duration(value).map_err(|e| format!("--surge `{text}`: {what} `{value}`: {e}"))
        };
        let (start, end) = (duration("START", start)?, duration("END", end)?);
        if end <= start {
            return Err(format!("--surge `{text}`: END must be after START"));
        }
        Ok(Surge {
            city: city.trim().to_string(),
            factor,
            start,
            end,
        })
    }
}

/// Parses `90s`, `5m`, `1h 30m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Ok(Duration::from_secs_f64(seconds));
        }
    }
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// What the world is made of.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    /// Seeds every random choice.
    pub seed: u64,
    /// Ride events per minute outside surges.
    pub rate_per_minute: f64,
    /// The cities, with their popularity.
    pub cities: Vec<City>,
    /// Drivers in all cities together (each reports every 5 s).
    pub drivers: usize,
    /// Demand surges.
    pub surges: Vec<Surge>,
    /// Drivers going offline for a while.
    pub supply_drops: Vec<SupplyDrop>,
    /// Event time of the first emitted tick, in Unix milliseconds.
    pub start_ms: i64,
}

/// One message the world produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// For `ride-events`.
    Ride(RideEvent),
    /// For `driver-locations`.
    Location(DriverLocation),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Complete,
    CancelBeforeAccept,
    CancelAfterAccept,
}

/// A ride in flight.
#[derive(Clone, Debug)]
struct Ride {
    number: u64,
    city: usize,
    user: u32,
    driver: Option<usize>,
    plan: Plan,
    stage: EventType,
    /// When the rider asked, for their patience while no driver has room.
    requested_at: i64,
    estimate: f64,
    km: f64,
    pickup: GeoPoint,
    dropoff: GeoPoint,
}

/// A driver and where it is.
#[derive(Clone, Debug)]
struct Driver {
    city: usize,
    number: usize,
    position: GeoPoint,
    rides: u32,
    offline: bool,
    /// Offline because of an active `--supply-drop`.
    dropped: bool,
}

/// The simulated ride service.
pub struct World {
    config: WorldConfig,
    rng: ChaCha8Rng,
    /// Index of the next tick; negative while pre-warming.
    tick: i64,
    quota_carry: f64,
    request_carry: f64,
    /// Rides in flight, by slot; `free` lists empty slots for reuse.
    rides: Vec<Option<Ride>>,
    free: Vec<usize>,
    /// Lifecycle steps by (due time, sequence number for a stable order, ride slot).
    due: BinaryHeap<Reverse<(i64, u64, usize)>>,
    sequence: u64,
    next_ride: u64,
    drivers: Vec<Driver>,
    drivers_by_city: Vec<Vec<usize>>,
    /// Rides one driver of the city holds at most (see the module doc).
    capacity: Vec<u32>,
    users_by_city: Vec<u32>,
    total_weight: f64,
}

fn round_to(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

impl World {
    /// A world that has already run for [`PREWARM`]; the next [`World::tick`] is the first
    /// emitted one, at `config.start_ms`.
    pub fn new(config: WorldConfig) -> World {
        assert!(!config.cities.is_empty(), "at least one city");
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let total_weight: f64 = config.cities.iter().map(|c| c.weight).sum();
        let mut drivers = Vec::new();
        let mut drivers_by_city = vec![Vec::new(); config.cities.len()];
        for (index, city) in config.cities.iter().enumerate() {
            let count =
                ((config.drivers as f64 * city.weight / total_weight).round() as usize).max(2);
            for number in 0..count {
                drivers_by_city[index].push(drivers.len());
                drivers.push(Driver {
                    city: index,
                    number,
                    position: GeoPoint {
                        lat: city.lat + rng.random_range(-0.05..0.05),
                        lng: city.lng + rng.random_range(-0.05..0.05),
                    },
                    rides: 0,
                    offline: number % OFFLINE_ONE_IN == OFFLINE_ONE_IN - 1,
                    dropped: false,
                });
            }
        }
        // Riders: a pool per city, four per ride event per minute overall.
        let riders = (config.rate_per_minute * 4.0).max(1000.0);
        let users_by_city = config
            .cities
            .iter()
            .map(|c| ((riders * c.weight / total_weight) as u32).max(20))
            .collect();
        // Capacity: the city's rides in flight in the steady state (requests per minute
        // times the mean holding time) over its online drivers, plus the headroom.
        let requests_per_minute = config.rate_per_minute / EVENTS_PER_RIDE;
        let capacity = config
            .cities
            .iter()
            .zip(&drivers_by_city)
            .map(|(city, fleet)| {
                let online = fleet
                    .iter()
                    .filter(|&&d| !drivers[d].offline)
                    .count()
                    .max(1) as f64;
                let in_flight =
                    requests_per_minute * city.weight / total_weight * MEAN_HOLD_S / 60.0;
                ((HEADROOM * in_flight / online).ceil() as u32).max(1)
            })
            .collect();
        let prewarm_ticks = PREWARM.as_millis() as i64 / TICK_MS;
        let mut world = World {
            config,
            rng,
            tick: -prewarm_ticks,
            quota_carry: 0.0,
            request_carry: 0.0,
            rides: Vec::new(),
            free: Vec::new(),
            due: BinaryHeap::new(),
            sequence: 0,
            next_ride: 0,
            drivers,
            drivers_by_city,
            capacity,
            users_by_city,
            total_weight,
        };
        let mut sink = Vec::new();
        while world.tick < 0 {
            world.step(false, &mut sink);
        }
        world
    }

    /// Event time at the start of the next tick.
    pub fn now_ms(&self) -> i64 {
        self.config.start_ms + self.tick * TICK_MS
    }

    /// Ticks emitted so far.
    pub fn ticks(&self) -> u64 {
        self.tick.max(0) as u64
    }

    /// Advances one tick, appending the ride events (in the order they happen) and then the
    /// driver locations of that tick to `out`.
    pub fn tick(&mut self, out: &mut Vec<Message>) {
        self.step(true, out);
    }

    /// The demand multiplier of `city` at event time `at_ms`.
    fn surge_factor(&self, city: usize, at_ms: i64) -> f64 {
        let offset = at_ms - self.config.start_ms;
        if offset < 0 {
            return 1.0;
        }
        let name = self.config.cities[city].name;
        self.config
            .surges
            .iter()
            .filter(|s| {
                s.city == name
                    && offset >= s.start.as_millis() as i64
                    && offset < s.end.as_millis() as i64
            })
            .map(|s| s.factor)
            .fold(1.0, f64::max)
    }

    /// Sets each driver's `dropped` flag for event time `at_ms`.
    fn apply_supply_drops(&mut self, at_ms: i64) {
        if self.config.supply_drops.is_empty() {
            return;
        }
        let offset = at_ms - self.config.start_ms;
        for (city, fleet) in self.drivers_by_city.iter().enumerate() {
            let name = self.config.cities[city].name;
            let active: Vec<&SupplyDrop> = self
                .config
                .supply_drops
                .iter()
                .filter(|d| d.city == name && offset >= 0 && d.active_at(offset))
                .collect();
            for (k, &driver) in fleet.iter().enumerate() {
                self.drivers[driver].dropped = active.iter().any(|d| d.takes(k));
            }
        }
    }

    /// Whether a driver can take one more ride.
    fn has_room(&self, driver: usize) -> bool {
        let d = &self.drivers[driver];
        !d.offline && !d.dropped && d.rides < self.capacity[d.city]
    }

    /// A driver of `city` with room for a ride: a random one, or the next with room after
    /// it in the fleet; `None` when every driver is offline or full.
    fn driver_with_room(&mut self, city: usize) -> Option<usize> {
        let len = self.drivers_by_city[city].len();
        let first = self.rng.random_range(0..len);
        (0..len)
            .map(|k| self.drivers_by_city[city][(first + k) % len])
            .find(|&d| self.has_room(d))
    }

    fn step(&mut self, emit: bool, out: &mut Vec<Message>) {
        let t0 = self.now_ms();
        let t1 = t0 + TICK_MS;
        self.apply_supply_drops(t0);
        let factors: Vec<f64> = (0..self.config.cities.len())
            .map(|c| self.config.cities[c].weight * self.surge_factor(c, t0))
            .collect();
        let demand: f64 = factors.iter().sum::<f64>() / self.total_weight;
        let per_tick = self.config.rate_per_minute * TICK_MS as f64 / 60_000.0 * demand;
        let first = out.len();
        // New requests follow demand: the steady state's request rate times the surges.
        self.request_carry += per_tick / EVENTS_PER_RIDE;
        let requests = (self.request_carry + 1e-9).floor();
        self.request_carry -= requests;
        let requests = requests as usize;
        if emit {
            // Exactly the quota of ride events: the requests, then due lifecycle steps
            // (oldest first; a surplus waits for the next tick), then, if still short,
            // steps due within PULL_AHEAD_MS. Every step is scheduled at least 5 s after
            // its ride's previous event, so pulling one forward keeps the ride in order.
            self.quota_carry += per_tick;
            let quota = (self.quota_carry + 1e-9).floor();
            self.quota_carry -= quota;
            let mut budget = quota as i64 - requests as i64;
            while budget > 0
                && self
                    .due
                    .peek()
                    .is_some_and(|Reverse((due, _, _))| *due < t1 + PULL_AHEAD_MS)
            {
                let Reverse((due, _, slot)) = self.due.pop().expect("peeked");
                if self.advance(slot, due.clamp(t0, t1 - 1), Some(&mut *out)) {
                    budget -= 1;
                }
            }
            // A shortfall (right after demand jumps) is made up in later ticks, an excess
            // (more requests than the quota) is paid back. A long driver shortage makes
            // fewer events than the quota: at most a minute of that is made up afterwards.
            self.quota_carry = (self.quota_carry + budget as f64).min(per_tick * 600.0);
        } else {
            // Pre-warm: every due step fires at its time.
            while self
                .due
                .peek()
                .is_some_and(|Reverse((due, _, _))| *due < t1)
            {
                let Reverse((due, _, slot)) = self.due.pop().expect("peeked");
                self.advance(slot, due, None);
            }
        }
        let total: f64 = factors.iter().sum();
        for index in 0..requests {
            let mut pick = self.rng.random_range(0.0..total);
            let mut city = factors.len() - 1;
            for (c, weight) in factors.iter().enumerate() {
                if pick < *weight {
                    city = c;
                    break;
                }
                pick -= weight;
            }
            let at = t0 + (index as i64 * TICK_MS) / requests as i64;
            self.request(city, at, emit.then_some(&mut *out));
        }
        if emit {
            // Order the tick's ride events by time (stable: ties keep their order).
            out[first..].sort_by_key(|m| match m {
                Message::Ride(e) => e.timestamp,
                Message::Location(l) => l.timestamp,
            });
            self.locations(t0, out);
        }
        self.tick += 1;
    }

    fn schedule(&mut self, slot: usize, at: i64) {
        self.sequence += 1;
        self.due.push(Reverse((at, self.sequence, slot)));
    }

    fn seconds(&mut self, low: f64, high: f64) -> i64 {
        (self.rng.random_range(low..high) * 1000.0) as i64
    }

    fn request(&mut self, city: usize, at: i64, out: Option<&mut Vec<Message>>) {
        let c = &self.config.cities[city];
        let pool = self.users_by_city[city] as f64;
        // Frequent riders: a square skews picks toward low numbers.
        let user = (pool * self.rng.random::<f64>().powi(2)) as u32;
        let km = 1.0 + 14.0 * self.rng.random::<f64>().powi(2);
        let pickup = GeoPoint {
            lat: round_to(c.lat + self.rng.random_range(-0.05..0.05), 5),
            lng: round_to(c.lng + self.rng.random_range(-0.05..0.05), 5),
        };
        let bearing = self.rng.random_range(0.0..std::f64::consts::TAU);
        let dropoff = GeoPoint {
            lat: round_to(pickup.lat + km / 111.0 * bearing.sin(), 5),
            lng: round_to(pickup.lng + km / 75.0 * bearing.cos(), 5),
        };
        // Surge pricing: a quarter of the demand increase shows in the price.
        let pricing = 1.0 + 0.25 * (self.surge_factor(city, at) - 1.0);
        let estimate = round_to((c.base_fare + c.per_km * km) * pricing, 2);
        let roll = self.rng.random::<f64>();
        let plan = if roll < P_COMPLETE {
            Plan::Complete
        } else if roll < P_COMPLETE + (1.0 - P_COMPLETE) * P_CANCEL_BEFORE_ACCEPT {
            Plan::CancelBeforeAccept
        } else {
            Plan::CancelAfterAccept
        };
        let ride = Ride {
            number: self.next_ride,
            city,
            user,
            driver: None,
            plan,
            stage: EventType::Requested,
            requested_at: at,
            estimate,
            km,
            pickup,
            dropoff,
        };
        self.next_ride += 1;
        let next = at
            + match plan {
                Plan::CancelBeforeAccept => self.seconds(15.0, 180.0),
                _ => self.seconds(5.0, 60.0),
            };
        if let Some(out) = out {
            out.push(Message::Ride(self.event(
                &ride,
                EventType::Requested,
                at,
                Some(estimate),
            )));
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.rides[slot] = Some(ride);
                slot
            }
            None => {
                self.rides.push(Some(ride));
                self.rides.len() - 1
            }
        };
        self.schedule(slot, next);
    }

    /// Moves a ride to its next stage at time `at`; false when nothing happened (no driver
    /// had room for a waiting request, which is offered again [`RETRY_MS`] later).
    fn advance(&mut self, slot: usize, at: i64, out: Option<&mut Vec<Message>>) -> bool {
        let mut ride = self.rides[slot].take().expect("a scheduled ride exists");
        let (kind, fare, next) = match (ride.stage, ride.plan) {
            (EventType::Requested, Plan::CancelBeforeAccept) => (EventType::Cancelled, None, None),
            (EventType::Requested, plan) => {
                let Some(driver) = self.driver_with_room(ride.city) else {
                    // Patience: 2 to 8 minutes, fixed per ride (no draw from the stream).
                    let patience = 120_000 + (ride.number * 7_919 % 360) as i64 * 1_000;
                    if at - ride.requested_at < patience {
                        self.rides[slot] = Some(ride);
                        self.schedule(slot, at + RETRY_MS);
                        return false;
                    }
                    // The rider gave up before any driver had room.
                    if let Some(out) = out {
                        out.push(Message::Ride(self.event(
                            &ride,
                            EventType::Cancelled,
                            at,
                            None,
                        )));
                    }
                    self.free.push(slot);
                    return true;
                };
                self.drivers[driver].rides += 1;
                ride.driver = Some(driver);
                let wait = if plan == Plan::CancelAfterAccept {
                    self.seconds(30.0, 300.0)
                } else {
                    self.seconds(60.0, 480.0)
                };
                (EventType::Accepted, None, Some(at + wait))
            }
            (EventType::Accepted, Plan::CancelAfterAccept) => (EventType::Cancelled, None, None),
            (EventType::Accepted, _) => {
                let trip = (ride.km * self.rng.random_range(90.0..180.0) * 1000.0) as i64;
                (EventType::Started, None, Some(at + trip))
            }
            (EventType::Started, _) => {
                let fare = round_to(ride.estimate * self.rng.random_range(0.9..1.2), 2);
                (EventType::Completed, Some(fare), None)
            }
            (stage, plan) => unreachable!("no step after {stage:?} for {plan:?}"),
        };
        if let Some(out) = out {
            out.push(Message::Ride(self.event(&ride, kind, at, fare)));
        }
        ride.stage = kind;
        match next {
            Some(next) => {
                self.rides[slot] = Some(ride);
                self.schedule(slot, next);
            }
            None => {
                if let Some(driver) = ride.driver {
                    self.drivers[driver].rides -= 1;
                }
                self.free.push(slot);
            }
        }
        true
    }

    fn event(&self, ride: &Ride, kind: EventType, at: i64, fare: Option<f64>) -> RideEvent {
        let city = self.config.cities[ride.city].name;
        RideEvent {
            event_type: kind,
            ride_id: format!("ride-{}-{}", self.config.seed, ride.number).into(),
            timestamp: Timestamp(at),
            city: city.into(),
            estimated_fare: fare,
            user_id: format!("user-{city}-{}", ride.user).into(),
            driver_id: ride.driver.map(|d| self.driver_id(d).into()),
            pickup: Some(ride.pickup),
            dropoff: Some(ride.dropoff),
        }
    }

    fn driver_id(&self, driver: usize) -> String {
        let d = &self.drivers[driver];
        format!("driver-{}-{}", self.config.cities[d.city].name, d.number)
    }

    /// The drivers whose 5-second turn falls in this tick report their position.
    fn locations(&mut self, t0: i64, out: &mut Vec<Message>) {
        let turns = (LOCATION_EVERY_MS / TICK_MS) as usize;
        let turn = (self.tick as usize) % turns;
        for driver in (turn..self.drivers.len()).step_by(turns) {
            let step = 0.0005;
            let (dlat, dlng) = (
                self.rng.random_range(-step..step),
                self.rng.random_range(-step..step),
            );
            let capacity = self.capacity[self.drivers[driver].city];
            let d = &mut self.drivers[driver];
            if !d.offline {
                d.position.lat += dlat;
                d.position.lng += dlng;
            }
            let status = if d.offline || d.dropped {
                DriverStatus::Offline
            } else if d.rides >= capacity {
                DriverStatus::OnTrip
            } else {
                DriverStatus::Available
            };
            let (position, city) = (d.position, d.city);
            out.push(Message::Location(DriverLocation {
                driver_id: self.driver_id(driver),
                timestamp: Timestamp(t0 + (driver as i64 * 7) % TICK_MS),
                city: self.config.cities[city].name.to_string(),
                lat: round_to(position.lat, 6),
                lng: round_to(position.lng, 6),
                status,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::cities;
    use super::*;

    fn config(seed: u64, rate: f64) -> WorldConfig {
        WorldConfig {
            seed,
            rate_per_minute: rate,
            cities: cities::resolve(Some("5")).unwrap(),
            drivers: 200,
            surges: vec![],
            supply_drops: vec![],
            start_ms: 1_795_428_000_000,
        }
    }

    fn run(config: WorldConfig, ticks: usize) -> Vec<Message> {
        let mut world = World::new(config);
        let mut out = Vec::new();
        for _ in 0..ticks {
            world.tick(&mut out);
        }
        out
    }

    fn rides(messages: &[Message]) -> Vec<&RideEvent> {
        messages
            .iter()
            .filter_map(|m| match m {
                Message::Ride(e) => Some(e),
                Message::Location(_) => None,
            })
            .collect()
    }

    #[test]
    fn emits_exactly_the_rate() {
        let out = run(config(1, 50_000.0), 600);
        assert_eq!(rides(&out).len(), 50_000);
        let out = run(config(2, 1234.0), 6000);
        assert_eq!(rides(&out).len(), 12_340);
    }

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let a = run(config(7, 6000.0), 300);
        assert_eq!(a, run(config(7, 6000.0), 300));
        assert_ne!(rides(&a), rides(&run(config(8, 6000.0), 300)));
    }

    #[test]
    fn the_steady_state_mix_holds_from_the_first_minute() {
        let out = run(config(3, 30_000.0), 600);
        let mut kinds = BTreeMap::new();
        for event in rides(&out) {
            *kinds.entry(event.event_type).or_insert(0usize) += 1;
        }
        let share = |kind| kinds[&kind] as f64 / 30_000.0;
        // requests: 1/3.79 of events; completions 0.85 of that; cancellations 0.15.
        assert!(
            (share(EventType::Requested) - 0.264).abs() < 0.02,
            "{kinds:?}"
        );
        assert!(
            (share(EventType::Completed) - 0.224).abs() < 0.02,
            "{kinds:?}"
        );
        assert!(
            (share(EventType::Cancelled) - 0.040).abs() < 0.01,
            "{kinds:?}"
        );
    }

    #[test]
    fn every_ride_follows_its_lifecycle_in_time_order() {
        let out = run(config(4, 20_000.0), 3000);
        let mut by_ride: BTreeMap<&str, Vec<&RideEvent>> = BTreeMap::new();
        for event in rides(&out) {
            by_ride.entry(&event.ride_id).or_default().push(event);
        }
        let (mut requested, mut cancelled) = (0, 0);
        for events in by_ride.values() {
            let kinds: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
            assert!(
                events.windows(2).all(|w| w[0].timestamp <= w[1].timestamp),
                "{kinds:?}"
            );
            assert!(events
                .iter()
                .all(|e| e.city == events[0].city && e.user_id == events[0].user_id));
            use EventType::*;
            let order = [Requested, Accepted, Started, Completed];
            let position = |k: &EventType| order.iter().position(|o| o == k);
            for pair in kinds.windows(2) {
                match (position(&pair[0]), pair[1]) {
                    (Some(a), Cancelled) => assert!(a < 2, "{kinds:?}"),
                    (Some(a), next) => assert_eq!(position(&next), Some(a + 1), "{kinds:?}"),
                    (None, _) => panic!("event after cancellation: {kinds:?}"),
                }
            }
            if kinds[0] == Requested {
                requested += 1;
                cancelled += usize::from(kinds.contains(&Cancelled));
            }
            for e in events {
                match e.event_type {
                    Requested | Completed => assert!(e.estimated_fare.is_some_and(|f| f > 0.0)),
                    _ => assert_eq!(e.estimated_fare, None),
                }
                match e.event_type {
                    Requested => assert_eq!(e.driver_id, None),
                    Accepted | Started | Completed => assert!(e.driver_id.is_some()),
                    Cancelled => {}
                }
            }
        }
        // Rides requested in the first 5 minutes have finished or been cancelled by now
        // often enough to judge the share; it is 15 % by construction.
        let share = cancelled as f64 / requested as f64;
        assert!(share > 0.05 && share < 0.2, "{share}");
    }

    #[test]
    fn a_surge_multiplies_requests_in_its_city_only() {
        let mut c = config(5, 30_000.0);
        c.surges = vec![Surge::parse("paris:3:60:120").unwrap()];
        let out = run(c, 1200);
        let count = |city: &str, from: i64, to: i64| {
            rides(&out)
                .iter()
                .filter(|e| e.city == city && e.event_type == EventType::Requested)
                .filter(|e| (from..to).contains(&(e.timestamp.0 - 1_795_428_000_000)))
                .count() as f64
        };
        let (before, during) = (count("paris", 0, 60_000), count("paris", 60_000, 120_000));
        assert!(
            during / before > 2.5 && during / before < 3.5,
            "{before} -> {during}"
        );
        let (before, during) = (count("london", 0, 60_000), count("london", 60_000, 120_000));
        assert!((during / before - 1.0).abs() < 0.15, "{before} -> {during}");
    }

    #[test]
    fn every_driver_reports_every_five_seconds() {
        let out = run(config(6, 1000.0), 100);
        let mut per_driver: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &out {
            if let Message::Location(l) = m {
                *per_driver.entry(&l.driver_id).or_default() += 1;
            }
        }
        assert!(per_driver.len() >= 190, "{}", per_driver.len());
        assert!(per_driver.values().all(|&n| n == 2), "{per_driver:?}");
    }

    const MINUTE: i64 = 60_000;

    /// Distinct drivers of `city` that reported `available` during minute `m` of the run.
    fn available_drivers(messages: &[Message], city: &str, m: i64) -> usize {
        let from = 1_795_428_000_000 + m * MINUTE;
        let drivers: std::collections::BTreeSet<&str> = messages
            .iter()
            .filter_map(|message| match message {
                Message::Location(l)
                    if l.city == city
                        && l.status == DriverStatus::Available
                        && (from..from + MINUTE).contains(&l.timestamp.0) =>
                {
                    Some(l.driver_id.as_str())
                }
                _ => None,
            })
            .collect();
        drivers.len()
    }

    /// SPEC §5's waiting riders of `city` at the end of minute `m` of the run, recomputed
    /// from the emitted ride events: rides whose latest event before the end is `requested`
    /// and at most 10 minutes old.
    fn waiting_riders(messages: &[Message], city: &str, m: i64) -> usize {
        let end = 1_795_428_000_000 + (m + 1) * MINUTE;
        let mut latest: BTreeMap<&str, (i64, EventType)> = BTreeMap::new();
        for event in rides(messages) {
            if event.city == city && event.timestamp.0 < end {
                let entry = latest
                    .entry(&event.ride_id)
                    .or_insert((i64::MIN, event.event_type));
                if event.timestamp.0 >= entry.0 {
                    *entry = (event.timestamp.0, event.event_type);
                }
            }
        }
        latest
            .values()
            .filter(|(at, kind)| *kind == EventType::Requested && *at >= end - 10 * MINUTE)
            .count()
    }

    #[test]
    fn a_supply_drop_takes_available_drivers_away_and_riders_wait() {
        let mut c = config(9, 6000.0);
        c.drivers = 400;
        c.supply_drops = vec![SupplyDrop::parse("paris:0.8:2m:8m").unwrap()];
        let out = run(c, 11 * 600);
        let calm = run(config_with_drivers(9, 6000.0, 400), 11 * 600);
        let paris: Vec<usize> = (0..11)
            .map(|m| available_drivers(&out, "paris", m))
            .collect();
        let london: Vec<usize> = (0..11)
            .map(|m| available_drivers(&out, "london", m))
            .collect();
        let waiting: Vec<usize> = (0..11).map(|m| waiting_riders(&out, "paris", m)).collect();
        let calm_waiting: Vec<usize> = (0..11).map(|m| waiting_riders(&calm, "paris", m)).collect();
        eprintln!("paris available {paris:?}\nlondon available {london:?}\nparis waiting {waiting:?}\ncalm waiting {calm_waiting:?}");
        // Before the drop the same as without it; during it at most the 20 % left.
        let before: Vec<usize> = (0..2)
            .map(|m| available_drivers(&calm, "paris", m))
            .collect();
        assert_eq!(paris[..2], before[..]);
        for m in 2..8 {
            assert!(
                (paris[m] as f64) <= 0.25 * paris[1] as f64,
                "minute {m}: {paris:?}"
            );
        }
        // After it the drivers come back.
        assert!(paris[10] as f64 >= 0.8 * paris[1] as f64, "{paris:?}");
        // Another city does not notice.
        for m in 0..11 {
            assert!(
                (london[m] as f64 - london[1] as f64).abs() <= 0.1 * london[1] as f64,
                "{london:?}"
            );
        }
        // Riders wait: more of them than without the drop, and more than before it.
        for m in 5..8 {
            assert!(
                waiting[m] > 2 * calm_waiting[m],
                "minute {m}: {waiting:?} vs {calm_waiting:?}"
            );
            assert!(waiting[m] > 2 * waiting[1], "minute {m}: {waiting:?}");
        }
        // Some of them give up: more cancellations than without the drop.
        let cancelled = |messages: &[Message]| {
            rides(messages)
                .iter()
                .filter(|e| e.city == "paris" && e.event_type == EventType::Cancelled)
                .count()
        };
        assert!(
            cancelled(&out) > cancelled(&calm),
            "{} vs {}",
            cancelled(&out),
            cancelled(&calm)
        );
    }

    fn config_with_drivers(seed: u64, rate: f64, drivers: usize) -> WorldConfig {
        WorldConfig {
            drivers,
            ..config(seed, rate)
        }
    }

    #[test]
    fn a_surge_shows_as_waiting_riders_rising() {
        let mut c = config_with_drivers(10, 6000.0, 400);
        c.surges = vec![Surge::parse("paris:3:2m:6m").unwrap()];
        let out = run(c, 7 * 600);
        let waiting: Vec<usize> = (0..7).map(|m| waiting_riders(&out, "paris", m)).collect();
        let available: Vec<usize> = (0..7)
            .map(|m| available_drivers(&out, "paris", m))
            .collect();
        eprintln!("waiting {waiting:?}\navailable {available:?}");
        // Three times the requests with a quarter of headroom: the drivers run out of room
        // and the queue grows beyond the three times as many requests in matching.
        assert!(waiting[5] > 4 * waiting[1], "{waiting:?}");
        assert!(available[5] * 2 < available[1], "{available:?}");
    }

    #[test]
    fn surges_and_durations_parse() {
        let s = Surge::parse("bratislava:2:1m:4m").unwrap();
        assert_eq!(
            (s.factor, s.start, s.end),
            (2.0, Duration::from_secs(60), Duration::from_secs(240))
        );
        assert!(Surge::parse("bratislava:2:4m")
            .unwrap_err()
            .contains("CITY:FACTOR:START:END"));
        assert!(Surge::parse("x:-1:0:1").unwrap_err().contains("FACTOR"));
        assert!(Surge::parse("x:2:5m:1m")
            .unwrap_err()
            .contains("after START"));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("soon").is_err());
    }
}
