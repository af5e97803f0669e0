//! The bindings generated from `wit/` for the `any-plugin` world (the union of every
//! kind's exports), once for the whole host, with serde on every record and variant so
//! checkpoints and metrics store them as they are. The plugin runtime uses the exports;
//! everything else uses the types through [`super`].

wasmtime::component::bindgen!({
    path: "../wit",
    world: "recast:plugins/any-plugin",
    additional_derives: [serde::Serialize, serde::Deserialize],
});

pub use self::exports::recast::plugins::{aux_schedule, init_scheme, router, sampler};
pub use self::recast::plugins::{aux_schedule_types, init_scheme_types, router_types, sampler_types, types};
