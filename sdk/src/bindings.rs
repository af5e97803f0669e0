//! Guest bindings generated from `wit/`, one module per plugin world. The router world
//! owns the shared `types` and `host` interfaces; the other worlds reuse them, so a type
//! such as `LayerStats` is the same Rust type in every kind.

#![allow(missing_docs, clippy::all)]

/// Bindings for the `router-plugin` world.
pub mod router_world {
    wit_bindgen::generate!({
        path: "../wit",
        world: "recast:plugins/router-plugin",
        runtime_path: "recast_sdk::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_router_world",
        default_bindings_module: "recast_sdk::bindings::router_world",
    });
}

/// Bindings for the `aux-schedule-plugin` world.
pub mod aux_schedule_world {
    wit_bindgen::generate!({
        path: "../wit",
        world: "recast:plugins/aux-schedule-plugin",
        runtime_path: "recast_sdk::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_aux_schedule_world",
        default_bindings_module: "recast_sdk::bindings::aux_schedule_world",
        with: {
            "recast:plugins/types@0.1.0": crate::bindings::router_world::recast::plugins::types,
            "recast:plugins/host@0.1.0": crate::bindings::router_world::recast::plugins::host,
        },
    });
}

/// Bindings for the `init-scheme-plugin` world.
pub mod init_scheme_world {
    wit_bindgen::generate!({
        path: "../wit",
        world: "recast:plugins/init-scheme-plugin",
        runtime_path: "recast_sdk::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_init_scheme_world",
        default_bindings_module: "recast_sdk::bindings::init_scheme_world",
        with: {
            "recast:plugins/types@0.1.0": crate::bindings::router_world::recast::plugins::types,
            "recast:plugins/host@0.1.0": crate::bindings::router_world::recast::plugins::host,
        },
    });
}

/// Bindings for the `sampler-plugin` world.
pub mod sampler_world {
    wit_bindgen::generate!({
        path: "../wit",
        world: "recast:plugins/sampler-plugin",
        runtime_path: "recast_sdk::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_sampler_world",
        default_bindings_module: "recast_sdk::bindings::sampler_world",
        with: {
            "recast:plugins/types@0.1.0": crate::bindings::router_world::recast::plugins::types,
            "recast:plugins/host@0.1.0": crate::bindings::router_world::recast::plugins::host,
        },
    });
}
