//! Nova's instance states (`nova/compute/vm_states.py`, `task_states.py`,
//! `power_state.py`), defined with the objects that carry them.

pub use crate::objects::states::{PowerState, TaskState, VmState};
