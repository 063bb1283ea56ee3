"""What an ``--evolve`` study leaves for its user, rewritten after every trial from the study's storage (so the
trials of every process sharing the study are in it):

    evolve.csv          one row per trial: fitness, epochs run, pruned or not, seconds, parameters
    hyp_evolved.yaml    the best trial's hyper-parameters, ready for --hyp
    evolve.txt          the best trial, its command line, its gain over the base recipe, what pruning saved
    evolve.png          fitness per trial, and each searched parameter against fitness
"""
import csv
import io
import os
import shlex
from pathlib import Path

import yaml

from utils.evolve.space import recipe, searched
from utils.eval.plots import plot_evolve

SKIP_FLAGS = {'evolve', 'evolve_space', 'evolve_storage', 'evolve_pruner', 'resume', 'project', 'name', 'exist_ok',
              'local_rank', 'hyp', 'freeze', 'freeze_bn_stats', 'unfreeze_epoch'}
ENDED = ('COMPLETE', 'PRUNED', 'FAIL')


def trial_rows(study, space):
    """One dict per ended trial, in trial order."""
    keys = searched(space)
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in ENDED:
            continue
        a = t.user_attrs
        fit = t.value if t.state.name == 'COMPLETE' else a.get('best_fitness')
        rows.append({'trial': t.number, 'state': t.state.name.lower(), 'fitness': fit,
                     'epochs_run': a.get('epochs_run', 0), 'epochs': a.get('epochs', 0),
                     'pruned': t.state.name == 'PRUNED', 'seconds': a.get('seconds', 0.0),
                     'baseline': bool(a.get('baseline')), **{k: t.params.get(k, '') for k in keys}})
    return rows


def pruning_savings(rows):
    """Epochs and (estimated) seconds that pruning saved: a pruned trial would have run all its epochs, at the
    seconds per epoch the study's trials took on average."""
    ended = [r for r in rows if r['state'] in ('complete', 'pruned')]
    run_epochs = sum(r['epochs_run'] for r in ended)
    full_epochs = sum(r['epochs'] for r in ended)
    seconds = sum(r['seconds'] for r in ended)
    per_epoch = seconds / run_epochs if run_epochs else 0.0
    saved = full_epochs - run_epochs
    return {'trials': len(ended), 'pruned': sum(r['pruned'] for r in ended), 'epochs_run': run_epochs,
            'epochs_full': full_epochs, 'epochs_saved': saved, 'seconds': round(seconds, 1),
            'seconds_saved': round(saved * per_epoch, 1),
            'share_saved': saved / full_epochs if full_epochs else 0.0}


def best_command(opt, defaults, values, hyp_path):
    """``python train.py ...`` for the best recipe: the flags that differ from the defaults, and the evolved ones."""
    args = ['python', 'train.py']
    for k, v in vars(opt).items():
        if k in SKIP_FLAGS or k not in defaults or v == defaults[k] or v is None:
            continue
        flag = '--' + k.replace('_', '-')
        if v is True:
            args.append(flag)
        elif v is not False:
            args += [flag, *map(str, v)] if isinstance(v, (list, tuple)) else [flag, str(v)]
    args += ['--hyp', str(hyp_path)]
    if values['freeze'] != '0':
        args += ['--freeze', *values['freeze'].split(), '--freeze-bn-stats', values['freeze_bn_stats']]
        if int(values['unfreeze_epoch']) >= 0:
            args += ['--unfreeze-epoch', str(values['unfreeze_epoch'])]
    return ' '.join(shlex.quote(a) for a in args)


def write_atomic(path, text):
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')  # processes sharing a folder never clash
    tmp.write_text(text)
    os.replace(tmp, path)


def write_csv(path, rows):
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: f'{v:.6g}' if isinstance(v, float) else v for k, v in r.items()})
    write_atomic(path, buf.getvalue())


def write_hyp(path, hyp, values, trial, fitness):
    evolved = {**hyp, **{k: v for k, v in values.items() if k in hyp}}
    head = (f"# Evolved by train.py --evolve: trial {trial}, fitness {fitness:.5f} (0.1 mAP50 + 0.9 mAP50-95)\n"
            f"# freezing (train.py flags): --freeze {values['freeze']} --freeze-bn-stats {values['freeze_bn_stats']}"
            f" --unfreeze-epoch {values['unfreeze_epoch']}\n")
    write_atomic(path, head + yaml.safe_dump(evolved, sort_keys=False))


def summary_text(study, rows, best, command, savings):
    lines = [f"study {study.study_name}: {savings['trials']} trials ended ({savings['pruned']} pruned)"]
    if best is not None:
        lines.append(f"best: trial {best['trial']}, fitness {best['fitness']:.5f}")
        base = next((r for r in rows if r['baseline'] and r['state'] == 'complete'), None)
        if base is not None:
            gain = best['fitness'] - base['fitness']
            rel = f" ({gain / base['fitness']:+.1%})" if base['fitness'] else ''
            lines.append(f"base recipe: trial {base['trial']}, fitness {base['fitness']:.5f}; best is "
                         f"{gain:+.5f}{rel}")
        lines.append(f'command: {command}')
    s = savings
    lines.append(f"pruning: ran {s['epochs_run']} of {s['epochs_full']} epochs, saved {s['epochs_saved']} epochs "
                 f"({s['share_saved']:.0%}), about {s['seconds_saved']:.0f} s of "
                 f"{s['seconds'] + s['seconds_saved']:.0f} s")
    return '\n'.join(lines) + '\n'


def write_outputs(study, save_dir, space, hyp, opt, defaults, final=False):
    """Rewrite every output from the study; returns the summary as a dict (best trial, savings, command)."""
    save_dir = Path(save_dir)
    rows = trial_rows(study, space)
    write_csv(save_dir / 'evolve.csv', rows)
    complete = [r for r in rows if r['state'] == 'complete']
    best_row = max(complete, key=lambda r: r['fitness'], default=None)
    command, values = None, None
    if best_row is not None:
        params = {t.number: t.params for t in study.get_trials(deepcopy=False)}
        values = recipe(space, params[best_row['trial']])
        hyp_path = save_dir / 'hyp_evolved.yaml'
        write_hyp(hyp_path, hyp, values, best_row['trial'], best_row['fitness'])
        command = best_command(opt, defaults, values, hyp_path)
    savings = pruning_savings(rows)
    text = summary_text(study, rows, best_row, command, savings)
    write_atomic(save_dir / 'evolve.txt', text)
    if rows:
        plot_evolve(rows, searched(space), save_dir / 'evolve.png')
    if final:
        print(f'evolve: results in {save_dir}\n{text}', end='')
    return {'save_dir': save_dir, 'best': best_row, 'values': values, 'command': command, 'savings': savings,
            'rows': rows}
