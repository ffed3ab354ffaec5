//! HITL policy globs in the agent runtime (`codelab_agent_runtime::hitl::HitlPolicy`): rules
//! with shell-glob patterns on tool names, first match wins, some limited to agents.
//!
//! Input (text): rule lines `pattern<TAB>approve|allow[<TAB>agent,agent[<TAB>reason]]` up to a
//! line `---`, then tool names, one a line.
//!
//! Invariants: no panic; a refused rule set names the first bad rule (the rules before it
//! compile, that one alone does not); for every agent and tool (the input's and the registered
//! ones): a disabled policy asks nothing, a session whose user chose the agent gets the plain
//! verdict and one that did not is never asked less, exemptions are the agent's own
//! workspace-changing tools, and a rule naming the tool literally (`globset::escape`) put
//! first decides it.
#![no_main]

use codelab_agent_runtime::agents::{AgentKind, tools_of};
use codelab_agent_runtime::hitl::{HitlPolicy, HitlRule};
use codelab_agent_runtime::tools;
use libfuzzer_sys::fuzz_target;

fn rule(line: &str) -> HitlRule {
    let mut fields = line.split('\t');
    let pattern = fields.next().unwrap_or_default().to_owned();
    let requires_approval = fields.next().is_some_and(|f| f == "approve");
    let agents = fields
        .next()
        .filter(|f| !f.is_empty())
        .map(|f| f.split(',').map(str::to_owned).collect());
    let reason = fields.next().map(str::to_owned);
    HitlRule {
        pattern,
        requires_approval,
        reason,
        agents,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rules_text, names_text) = text.split_once("\n---\n").unwrap_or((text, ""));
    let rules: Vec<HitlRule> = rules_text.lines().take(8).map(rule).collect();
    let policy = match HitlPolicy::from_rules(true, &rules) {
        Ok(policy) => policy,
        Err((index, message)) => {
            assert!(
                index < rules.len(),
                "index {index} of {} rules",
                rules.len()
            );
            assert!(!message.is_empty());
            assert!(HitlPolicy::from_rules(true, &rules[..index]).is_ok());
            assert!(HitlPolicy::from_rules(true, &rules[index..=index]).is_err());
            return;
        }
    };
    let mut disabled = policy.clone();
    disabled.enabled = false;

    let mut names: Vec<&str> = names_text.lines().take(8).collect();
    names.extend(tools::all().iter().map(|t| t.name));
    for agent in AgentKind::ALL {
        for tool in names.iter().copied() {
            let verdict = policy.evaluate(agent, tool);
            assert!(!disabled.evaluate(agent, tool).requires_approval);
            assert_eq!(policy.evaluate_in_session(agent, tool, true), verdict);
            let unchosen = policy.evaluate_in_session(agent, tool, false);
            assert!(unchosen.requires_approval || !verdict.requires_approval);
        }
        for tool in policy.exemptions(agent) {
            assert!(tools_of(agent).contains(&tool) && tools::changes_workspace(tool));
        }
    }
    // A literal rule put first decides its tool, whatever follows: one name and one verdict
    // per input (each policy compiles every glob again). `globset::escape` leaves `\` alone
    // (an escape character in globs), so names with one have no literal spelling this way.
    let requires_approval = data.len() % 2 == 0;
    let literal_name = names
        .iter()
        .copied()
        .find(|t| !t.trim().is_empty() && !t.contains('\\'));
    if let Some(tool) = literal_name {
        let mut first = vec![HitlRule {
            pattern: globset::escape(tool),
            requires_approval,
            reason: None,
            agents: None,
        }];
        first.extend(rules.iter().cloned());
        let literal = HitlPolicy::from_rules(true, &first).expect("an escaped name compiles");
        for agent in AgentKind::ALL {
            assert_eq!(
                literal.evaluate(agent, tool).requires_approval,
                requires_approval,
                "the literal rule for {tool:?} did not decide"
            );
        }
    }
});
