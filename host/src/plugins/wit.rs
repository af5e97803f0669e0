//! Host bindings generated from `wit/` for the `any-plugin` world, the union of every
//! kind's exports. The host loads only the interfaces a component actually exports.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "recast:plugins/any-plugin",
});

pub use self::exports::recast::plugins::{aux_schedule, init_scheme, router, sampler};
pub use self::recast::plugins::{aux_schedule_types, init_scheme_types, router_types, sampler_types, types};
