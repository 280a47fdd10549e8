//! A deterministic product catalog and the DRF-style search endpoint over it.
//!
//! The catalog is generated once at startup from a fixed seed, so every instance (and
//! every test run) serves byte-identical results: tests and the response cache can
//! compare bodies across runs and across two mock instances.

use std::sync::Arc;

use axum::{
    extract::{RawQuery, State},
    http::{header, HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

use crate::{app::AppState, respond};

/// Number of products generated.
pub const CATALOG_SIZE: u32 = 10_000;
/// Fixed seed: changing it changes every search answer.
pub const SEED: u64 = 0x00A7_0647_E5EE_D001;
pub const DEFAULT_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 100;

// Word lists are kept one entry per line of data rather than rustfmt's one word per
// line: they are data, and this way a whole category reads at a glance.

/// (category, product nouns, tag pool).
#[rustfmt::skip]
const CATEGORIES: [(&str, [&str; 8], [&str; 6]); 12] = [
    ("fitness", ["Kettlebell", "Dumbbell Set", "Resistance Band", "Jump Rope", "Pull-Up Bar", "Ab Roller", "Weight Bench", "Medicine Ball"], ["strength", "home-gym", "cardio", "workout", "training", "hiit"]),
    ("yoga", ["Yoga Mat", "Yoga Block", "Meditation Cushion", "Yoga Strap", "Yoga Wheel", "Bolster", "Mat Bag", "Yoga Towel"], ["yoga", "meditation", "flexibility", "mindfulness", "pilates", "stretching"]),
    ("running", ["Running Shoes", "Running Belt", "Hydration Vest", "Running Socks", "Reflective Jacket", "Headlamp", "Compression Tights", "Sports Watch"], ["running", "marathon", "trail", "cardio", "outdoor", "reflective"]),
    ("cycling", ["Bike Helmet", "Bike Light", "Cycling Gloves", "Saddle", "Bike Lock", "Bottle Cage", "Cycling Jersey", "Mini Pump"], ["cycling", "bike", "commute", "road", "mtb", "outdoor"]),
    ("swimming", ["Swim Goggles", "Swim Cap", "Kickboard", "Pull Buoy", "Swim Fins", "Swimsuit", "Towel Poncho", "Nose Clip"], ["swimming", "pool", "triathlon", "water", "training", "beach"]),
    ("hiking", ["Backpack", "Trekking Poles", "Hiking Boots", "Tent", "Sleeping Bag", "Water Filter", "Rain Jacket", "Camp Stove"], ["hiking", "camping", "outdoor", "trail", "backpacking", "waterproof"]),
    ("books", ["Cookbook", "Novel", "Field Guide", "Atlas", "Biography", "Workbook", "Poetry Collection", "Travel Guide"], ["reading", "paperback", "hardcover", "bestseller", "gift", "ebook"]),
    ("kitchen", ["Chef Knife", "Frying Pan", "Cutting Board", "Blender", "Coffee Grinder", "Dutch Oven", "Spice Rack", "Mixing Bowl"], ["cooking", "baking", "kitchen", "dishwasher-safe", "gift", "coffee"]),
    ("garden", ["Garden Hose", "Pruning Shears", "Watering Can", "Planter", "Seed Kit", "Garden Gloves", "Compost Bin", "Trowel"], ["gardening", "outdoor", "plants", "organic", "tools", "watering"]),
    ("electronics", ["Headphones", "Bluetooth Speaker", "Power Bank", "USB-C Charger", "Smart Scale", "Fitness Tracker", "Webcam", "Keyboard"], ["wireless", "bluetooth", "usb-c", "rechargeable", "smart", "audio"]),
    ("toys", ["Building Blocks", "Puzzle", "Plush Bear", "Kite", "Board Game", "Toy Train", "Yo-Yo", "Art Set"], ["kids", "educational", "gift", "family", "outdoor", "creative"]),
    ("music", ["Ukulele", "Guitar Strings", "Metronome", "Drum Pad", "Harmonica", "Music Stand", "Capo", "Tuner"], ["music", "instrument", "practice", "beginner", "acoustic", "gift"]),
];

#[rustfmt::skip]
const ADJECTIVES: [&str; 20] = [
    "Lightweight", "Premium", "Classic", "Compact", "Durable", "Ergonomic", "Adjustable", "Portable", "Deluxe", "Essential", "Eco", "Smart", "Vintage", "Pro", "Ultra", "Everyday", "Foldable", "Organic", "Heavy-Duty", "Quick-Dry",
];

#[rustfmt::skip]
const MODELS: [&str; 10] = [
    "Lite", "Max", "Mini", "Plus", "Air", "One", "Sport", "Core", "Prime", "Studio",
];

#[rustfmt::skip]
const AUDIENCES: [&str; 8] = [
    "beginners", "everyday use", "athletes", "families", "travel", "small spaces", "professionals", "kids",
];

#[rustfmt::skip]
const MATERIALS: [&str; 8] = [
    "recycled plastic", "bamboo", "stainless steel", "organic cotton", "aluminium", "natural rubber", "oak", "silicone",
];

#[rustfmt::skip]
const FEATURES: [&str; 6] = [
    "easy to clean", "ships in two days", "two-year warranty", "award-winning design", "machine washable", "fits in a backpack",
];

#[derive(Debug, Clone, Serialize)]
pub struct Product {
    pub id: u32,
    pub name: String,
    pub category: &'static str,
    /// A decimal string, as DRF's DecimalField renders by default.
    pub price: String,
    pub description: String,
    pub tags: Vec<&'static str>,
    /// Lowercased name, description and tags: what `q` is matched against.
    #[serde(skip)]
    haystack: String,
}

/// splitmix64: tiny, fast and good enough to make a catalog look varied.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        // `items` is never empty here (const arrays); modulo bias is irrelevant.
        &items[(self.next() % items.len() as u64) as usize]
    }
}

pub struct Catalog {
    products: Vec<Product>,
}

impl Catalog {
    pub fn generate(size: u32, seed: u64) -> Self {
        let mut rng = SplitMix64(seed);
        let products = (1..=size)
            .map(|id| {
                let (category, nouns, tag_pool) = rng.pick(&CATEGORIES);
                let noun = rng.pick(nouns);
                let name = format!("{} {} {}", rng.pick(&ADJECTIVES), noun, rng.pick(&MODELS));
                let description = format!(
                    "{} {} for {}. Made from {}; {}.",
                    rng.pick(&ADJECTIVES),
                    noun.to_lowercase(),
                    rng.pick(&AUDIENCES),
                    rng.pick(&MATERIALS),
                    rng.pick(&FEATURES),
                );
                let want = 2 + (rng.next() % 2) as usize;
                let mut tags: Vec<&'static str> = Vec::with_capacity(want);
                while tags.len() < want {
                    let tag = *rng.pick(tag_pool);
                    if !tags.contains(&tag) {
                        tags.push(tag);
                    }
                }
                let cents = 199 + rng.next() % 49_800;
                let price = format!("{}.{:02}", cents / 100, cents % 100);
                let haystack = format!("{name} {description} {}", tags.join(" ")).to_lowercase();
                Product {
                    id,
                    name,
                    category,
                    price,
                    description,
                    tags,
                    haystack,
                }
            })
            .collect();
        Self { products }
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    /// Products matching every word of `q` (case-insensitive substring of name,
    /// description or tags) and, when given, exactly `category`; in id order.
    pub fn search(&self, q: Option<&str>, category: Option<&str>) -> Vec<&Product> {
        let words: Vec<String> = q
            .map(|q| q.split_whitespace().map(str::to_lowercase).collect())
            .unwrap_or_default();
        self.products
            .iter()
            .filter(|p| category.is_none_or(|c| p.category == c))
            .filter(|p| words.iter().all(|w| p.haystack.contains(w.as_str())))
            .collect()
    }
}

/// The `page` query parameter, as DRF's PageNumberPagination understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageNumber {
    Number(u64),
    Last,
}

/// One page of a result list: `number` is 1-based, `range` indexes the results.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub number: usize,
    pub range: std::ops::Range<usize>,
    pub has_next: bool,
}

/// DRF's paginator: page 1 exists even when empty; anything past the end, below 1 or
/// not a number is "Invalid page.".
pub fn paginate(count: usize, page: Option<&str>, page_size: usize) -> Option<Page> {
    let num_pages = count.div_ceil(page_size).max(1);
    let requested = match page.map(str::trim) {
        None | Some("") => PageNumber::Number(1),
        Some("last") => PageNumber::Last,
        Some(s) => PageNumber::Number(s.parse().ok()?),
    };
    let number = match requested {
        PageNumber::Last => num_pages,
        PageNumber::Number(n) => usize::try_from(n)
            .ok()
            .filter(|n| (1..=num_pages).contains(n))?,
    };
    let start = (number - 1) * page_size;
    Some(Page {
        number,
        range: start..(start + page_size).min(count),
        has_next: number < num_pages,
    })
}

/// `page_size`: a positive integer clamped to the maximum, else the default (DRF's
/// `_positive_int(strict=True, cutoff=max_page_size)` with its fallback).
pub fn page_size(raw: Option<&str>) -> usize {
    raw.and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .map_or(DEFAULT_PAGE_SIZE, |n| n.min(MAX_PAGE_SIZE))
}

/// The request URL with `page` replaced (or removed for `None`), like DRF's
/// `replace_query_param` / `remove_query_param`: other parameters are kept as sent
/// and sorted by name.
pub fn page_url(host: &str, path: &str, query: Option<&str>, page: Option<usize>) -> String {
    let mut pieces: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let key = p.split_once('=').map_or(p, |(k, _)| k);
            (
                respond::form_pairs(key)
                    .pop()
                    .map(|(k, _)| k)
                    .unwrap_or_default(),
                p.to_owned(),
            )
        })
        .filter(|(key, _)| key != "page")
        .collect();
    if let Some(n) = page {
        pieces.push(("page".to_owned(), format!("page={n}")));
    }
    pieces.sort_by(|a, b| a.0.cmp(&b.0));
    let query: Vec<String> = pieces.into_iter().map(|(_, raw)| raw).collect();
    if query.is_empty() {
        format!("http://{host}{path}")
    } else {
        format!("http://{host}{path}?{}", query.join("&"))
    }
}

/// `GET /api/products/search/?q=&category=&page=&page_size=`.
pub async fn search(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params = query
        .as_deref()
        .map(respond::form_pairs)
        .unwrap_or_default();
    let param = |name: &str| {
        params
            .iter()
            .find_map(|(k, v)| (k == name).then_some(v.as_str()))
    };
    // django-filter ignores empty filter values.
    let q = param("q").filter(|s| !s.trim().is_empty());
    let category = param("category").filter(|s| !s.is_empty());
    let size = page_size(param("page_size"));

    let results = state.catalog.search(q, category);
    let Some(page) = paginate(results.len(), param("page"), size) else {
        return respond::detail(StatusCode::NOT_FOUND, "Invalid page.");
    };

    let host = respond::header_str(&headers, header::HOST.as_str()).unwrap_or("localhost");
    let path = uri.path();
    let next = page
        .has_next
        .then(|| page_url(host, path, query.as_deref(), Some(page.number + 1)));
    let previous = (page.number > 1).then(|| {
        let prev = page.number - 1;
        page_url(host, path, query.as_deref(), (prev > 1).then_some(prev))
    });
    // A struct rather than `json!` keeps DRF's key order (count, next, previous,
    // results; id first in each product) in the body.
    Json(SearchPage {
        count: results.len(),
        next,
        previous,
        results: &results[page.range],
    })
    .into_response()
}

#[derive(Serialize)]
struct SearchPage<'a> {
    count: usize,
    next: Option<String>,
    previous: Option<String>,
    results: &'a [&'a Product],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::generate(CATALOG_SIZE, SEED)
    }

    #[test]
    fn generation_is_deterministic_and_large() {
        let a = catalog();
        let b = catalog();
        assert!(a.len() >= 10_000);
        let ja = serde_json::to_string(&a.products[..50]).expect("json");
        let jb = serde_json::to_string(&b.products[..50]).expect("json");
        assert_eq!(ja, jb);
        let categories: std::collections::BTreeSet<_> =
            a.products.iter().map(|p| p.category).collect();
        assert_eq!(categories.len(), 12);
        let p = &a.products[0];
        assert_eq!(p.id, 1);
        assert!(p.price.contains('.'));
        assert!(p.tags.len() >= 2);
    }

    #[test]
    fn query_words_must_all_match_case_insensitively() {
        let c = catalog();
        let hits = c.search(Some("YOGA mat"), None);
        assert!(!hits.is_empty());
        for p in &hits {
            let text = format!("{} {} {}", p.name, p.description, p.tags.join(" ")).to_lowercase();
            assert!(text.contains("yoga") && text.contains("mat"), "{}", p.name);
        }
        let yoga_only = c.search(Some("yoga"), None).len();
        assert!(yoga_only > hits.len());
        assert!(c.search(Some("definitely-not-there"), None).is_empty());
        // Tags are searchable too.
        assert!(!c.search(Some("home-gym"), None).is_empty());
    }

    #[test]
    fn category_is_exact() {
        let c = catalog();
        let books = c.search(None, Some("books"));
        assert!(!books.is_empty());
        assert!(books.iter().all(|p| p.category == "books"));
        assert!(c.search(None, Some("Books")).is_empty());
        assert!(c.search(None, Some("book")).is_empty());
        assert_eq!(c.search(None, None).len(), c.len());
        let ids: Vec<u32> = books.iter().map(|p| p.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "id order");
    }

    #[test]
    fn pagination_follows_drf() {
        assert_eq!(
            paginate(45, None, 20),
            Some(Page {
                number: 1,
                range: 0..20,
                has_next: true
            })
        );
        assert_eq!(
            paginate(45, Some("3"), 20),
            Some(Page {
                number: 3,
                range: 40..45,
                has_next: false
            })
        );
        assert_eq!(paginate(45, Some("last"), 20).map(|p| p.number), Some(3));
        assert_eq!(paginate(45, Some("4"), 20), None);
        assert_eq!(paginate(45, Some("0"), 20), None);
        assert_eq!(paginate(45, Some("-1"), 20), None);
        assert_eq!(paginate(45, Some("abc"), 20), None);
        // An empty result still has page 1.
        assert_eq!(
            paginate(0, None, 20),
            Some(Page {
                number: 1,
                range: 0..0,
                has_next: false
            })
        );
        assert_eq!(paginate(0, Some("2"), 20), None);
    }

    #[test]
    fn page_size_defaults_and_clamps() {
        assert_eq!(page_size(None), 20);
        assert_eq!(page_size(Some("5")), 5);
        assert_eq!(page_size(Some("1000")), 100);
        assert_eq!(page_size(Some("0")), 20);
        assert_eq!(page_size(Some("x")), 20);
    }

    #[test]
    fn page_urls_replace_page_and_sort() {
        assert_eq!(
            page_url(
                "h:8",
                "/s/",
                Some("q=yoga+mat&page=2&category=yoga"),
                Some(3)
            ),
            "http://h:8/s/?category=yoga&page=3&q=yoga+mat"
        );
        assert_eq!(page_url("h", "/s/", Some("page=2"), None), "http://h/s/");
        assert_eq!(page_url("h", "/s/", None, Some(2)), "http://h/s/?page=2");
    }
}
