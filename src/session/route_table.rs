//! A listener's routes as its connections use them: each with its backend's balancer and its match counter, and
//! the default backend.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use crate::balancer::Balancer;
use crate::config::RouteConfig;
use crate::metrics::{Metrics, RouteLabels};
use crate::routes::{Client, Conditions};

/// One route, ready for connections.
pub struct Route {
    pub name: String,
    pub conditions: Conditions,
    pub balancer: Arc<Balancer>,
    /// `mqttlb_route_matches_total{listener, route}`.
    matches: Counter,
}

/// Where a listener's clients go: the first route that matches, else the default backend (None: refused).
pub struct Table {
    pub routes: Vec<Route>,
    pub default: Option<Arc<Balancer>>,
}

impl Table {
    /// The table of a listener named `listener`, its backends taken from `pools` (one per backend, in order).
    /// A route whose backend index is out of range (never, after `check`) is left out.
    pub fn new(
        listener: &str,
        routes: &[RouteConfig],
        default: Option<usize>,
        pools: &[Arc<Balancer>],
        metrics: &Metrics,
    ) -> Table {
        let routes = routes
            .iter()
            .filter_map(|r| {
                let balancer = Arc::clone(pools.get(r.backend)?);
                let labels = RouteLabels { listener: listener.to_owned(), route: r.name.clone() };
                let matches = metrics.route_matches.get_or_create(&labels).clone();
                Some(Route { name: r.name.clone(), conditions: r.conditions.clone(), balancer, matches })
            })
            .collect();
        Table { routes, default: default.and_then(|i| pools.get(i)).cloned() }
    }

    /// The backend for `client`: the first route that matches (counted), else the default.
    pub fn choose(&self, client: &Client<'_>) -> Option<&Arc<Balancer>> {
        match self.routes.iter().find(|r| r.conditions.hold(client)) {
            Some(route) => {
                route.matches.inc();
                Some(&route.balancer)
            }
            None => self.default.as_ref(),
        }
    }
}
