//! The machine lifecycle: the one transition function every state change goes through.

use aloft_api::MachineState;
use aloft_api::MachineState::*;

/// A state change the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Machine cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub from: MachineState,
    pub to: MachineState,
}

/// Checks that a machine may go from `from` to `to` and returns `to`.
///
/// Staying in the same state is not a transition; callers handle it as a no-op.
pub fn transition(from: MachineState, to: MachineState) -> Result<MachineState, InvalidTransition> {
    let allowed = match from {
        Created => matches!(to, Starting | Stopped | Replacing | Destroying | Failed),
        Starting => matches!(to, Started | Stopping | Stopped | Destroying | Failed),
        Started => matches!(
            to,
            Starting | Stopping | Stopped | Suspending | Replacing | Destroying | Failed
        ),
        Stopping => matches!(to, Stopped | Started | Destroying | Failed),
        Stopped => matches!(to, Starting | Replacing | Destroying | Failed),
        Suspending => matches!(to, Suspended | Stopped | Started | Destroying | Failed),
        Suspended => matches!(to, Starting | Stopped | Replacing | Destroying | Failed),
        Replacing => matches!(
            to,
            Created | Starting | Started | Stopped | Destroying | Failed
        ),
        Destroying => matches!(to, Destroyed | Failed),
        Destroyed => false,
        Failed => matches!(to, Starting | Stopped | Replacing | Destroying),
    };
    if allowed && from != to {
        Ok(to)
    } else {
        Err(InvalidTransition { from, to })
    }
}

/// Whether a machine in this state holds host resources and counts as running for deletes.
pub fn is_active(state: MachineState) -> bool {
    matches!(
        state,
        Starting | Started | Stopping | Suspending | Replacing
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_lifecycle_is_allowed() {
        let path = [
            Created, Starting, Started, Stopping, Stopped, Starting, Started, Suspending,
            Suspended, Starting, Started, Destroying, Destroyed,
        ];
        for pair in path.windows(2) {
            assert_eq!(
                transition(pair[0], pair[1]),
                Ok(pair[1]),
                "{} -> {}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn destroyed_is_terminal_and_self_transitions_are_refused() {
        for to in MachineState::ALL {
            assert!(transition(Destroyed, to).is_err());
            assert!(transition(to, to).is_err());
        }
    }

    #[test]
    fn skipping_destroying_is_refused() {
        let err = transition(Started, Destroyed).unwrap_err();
        assert_eq!(
            err,
            InvalidTransition {
                from: Started,
                to: Destroyed
            }
        );
        assert_eq!(
            err.to_string(),
            "Machine cannot go from started to destroyed"
        );
    }
}
