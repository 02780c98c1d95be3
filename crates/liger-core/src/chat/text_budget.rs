//! Paying for the text a template makes out of lists, before it is made.
//!
//! minijinja keeps `+` and `*` on lists lazy and charges no fuel for them, so a few doublings
//! build a list of billions of items for free. The built-in filters, tests and methods that
//! turn a list into text (`string`, `tojson`, `join`, `lower`, `{{ list }}`, ...) or compare
//! two lists then walk all of it without charging, and the rendering hangs or the process
//! runs out of memory. Here each of them is wrapped so that it first pays for the text it
//! will make: one fuel per 64 bytes of strings and per two items, as minijinja charges.

use std::sync::OnceLock;

use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{Environment, Error, State};

/// Built-in filters that turn their input into text (strings of lists, JSON, escaped text).
/// Filters that iterate (`list`, `sort`, `unique`, `map`, ...) already pay per item.
const TEXT_FILTERS: &[&str] = &[
    "capitalize",
    "e",
    "escape",
    "format",
    "indent",
    "join",
    "lines",
    "lower",
    "pprint",
    "replace",
    "safe",
    "split",
    "string",
    "title",
    "tojson",
    "trim",
    "upper",
];

/// Built-in tests that turn their input into text or compare two values item by item.
const TEXT_TESTS: &[&str] = &[
    "startingwith",
    "endingwith",
    "eq",
    "equalto",
    "==",
    "ne",
    "!=",
    "lt",
    "lessthan",
    "<",
    "le",
    "<=",
    "gt",
    "greaterthan",
    ">",
    "ge",
    ">=",
];

/// minijinja's fuel resolution: a byte costs one unit, an item 32, one fuel is 64 units.
const UNITS_PER_FUEL: u64 = 64;
const ITEM_UNITS: u64 = 32;
/// Units gathered before they are paid, so a huge value fails early in its walk.
const UNITS_PER_PAYMENT: u64 = 1 << 16;

/// Replaces the built-in filters, tests and `debug` that make text with ones that pay first,
/// and charges the values written to the output.
pub(super) fn install(env: &mut Environment<'static>) {
    for &name in TEXT_FILTERS {
        env.add_filter(name, move |state: &State, args: Rest<Value>| -> Result<Value, Error> {
            pay_for_text(state, &args)?;
            builtins().empty_state().apply_filter(name, &args)
        });
    }
    for &name in TEXT_TESTS {
        env.add_test(name, move |state: &State, args: Rest<Value>| -> Result<bool, Error> {
            pay_for_text(state, &args)?;
            builtins().empty_state().perform_test(name, &args)
        });
    }
    env.add_function("debug", |state: &State, args: Rest<Value>| -> Result<String, Error> {
        if args.is_empty() {
            // `debug()` prints every variable.
            let variables: Vec<Value> = state.known_variables().iter().filter_map(|name| state.lookup(name)).collect();
            pay_for_text(state, &variables)?;
            return Ok(format!("{state:#?}"));
        }
        pay_for_text(state, &args)?;
        Ok(if args.len() == 1 { format!("{:#?}", args[0]) } else { format!("{:#?}", &args[..]) })
    });
    env.set_formatter(|out, state, value| {
        pay_for_text(state, std::slice::from_ref(value))?;
        minijinja::escape_formatter(out, state, value)
    });
}

/// An environment with minijinja's own filters and tests, which the wrappers call once paid.
fn builtins() -> &'static Environment<'static> {
    static BUILTINS: OnceLock<Environment<'static>> = OnceLock::new();
    BUILTINS.get_or_init(Environment::new)
}

/// Charges the fuel for writing `values` out as text: the bytes of the strings inside lists
/// and maps and 32 units per item. A list's items are paid for before it is walked, so a list
/// of billions fails at once. Strings on their own cost nothing here: minijinja charged them
/// when they were made and a filter reads them without a walk.
pub(super) fn pay_for_text(state: &State, values: &[Value]) -> Result<(), Error> {
    let mut units = 0u64;
    let mut pending: Vec<Value> = values.iter().filter(|v| is_container(v)).cloned().collect();
    while let Some(value) = pending.pop() {
        let sized = value.len().map(|n| n as u64);
        if let Some(n) = sized {
            units = units.saturating_add(n.saturating_mul(ITEM_UNITS));
            pay_gathered(state, &mut units)?;
        }
        let is_map = value.kind() == ValueKind::Map;
        for item in value.try_iter()? {
            if sized.is_none() {
                units = units.saturating_add(ITEM_UNITS);
            }
            let item = if is_map {
                // a map's items are its keys: pay for the key, then walk its value.
                units = units.saturating_add(item.as_str().map_or(0, |k| k.len() as u64));
                value.get_item(&item)?
            } else {
                item
            };
            if let Some(s) = item.as_str() {
                units = units.saturating_add(s.len() as u64);
            } else if is_container(&item) {
                pending.push(item);
            }
            if units >= UNITS_PER_PAYMENT {
                pay_gathered(state, &mut units)?;
            }
        }
    }
    state.consume_fuel(units.div_ceil(UNITS_PER_FUEL))
}

/// Lists, lazy sequences and maps: the values whose text needs a walk.
fn is_container(value: &Value) -> bool {
    matches!(value.kind(), ValueKind::Seq | ValueKind::Iterable | ValueKind::Map)
}

/// Pays the whole fuel in `units`, keeping the remainder below one fuel.
fn pay_gathered(state: &State, units: &mut u64) -> Result<(), Error> {
    state.consume_fuel(*units / UNITS_PER_FUEL)?;
    *units %= UNITS_PER_FUEL;
    Ok(())
}
